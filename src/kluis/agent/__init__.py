"""The agent: the daemon on every protected machine (registration, heartbeat, jobs, scratch folder).

See docs/agent.md. Modules: ``config`` (agent.toml), ``net`` (probe, HTTP client),
``client`` (vault API calls), ``registration``, ``scratch`` (folder layout and checks),
``keys`` (KEK files), ``store`` (the repository in the vault, resume), ``throttle``,
``runner`` (one job), ``daemon`` (the service), ``state`` (status file).
"""
