"""The agent on a protected machine: its configuration, passphrase, daemon and job runners.

Registration, connectivity and scratch-folder conditions from the seeds live in
``registration``, ``connectivity`` and ``scratch``; this module holds what is particular
to Kluis's agent.
"""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="AgentNotRegistered",
        title="This machine is not registered with a vault",
        message="The agent has no configuration at {path}, so this machine is not registered with a vault.",
        causes=(
            "The machine was never registered, or its registration was removed.",
            "The agent looks in another configuration directory than the one used at registration.",
        ),
        actions=(
            "Register the machine with `kluis agent register --vault-credentials FILE`.",
            "If it was registered with `--config-dir DIR`, pass the same option (or set"
            " `KLUIS_AGENT_CONFIG_DIR`) for every `kluis agent` command and in the service unit.",
        ),
        http_status=409,
        exit_code=9,
        area="agent",
        doctor_check="registration",
    ),
    CatalogEntry(
        code="AgentConfigInvalid",
        title="The agent configuration cannot be used",
        message="The agent configuration {path} cannot be used: {reason}.",
        causes=(
            "The file was edited by hand and a value has the wrong type or range.",
            "The file is damaged or was only partly written.",
        ),
        actions=(
            "Correct the value the message names in {path}, then restart the agent"
            " (`systemctl restart kluis-agent`).",
            "If the file is beyond repair, register the machine again with `kluis agent register"
            " --vault-credentials FILE` and the same passphrase.",
        ),
        http_status=500,
        exit_code=2,
        area="agent",
        doctor_check="agent-config",
    ),
    CatalogEntry(
        code="AgentPassphraseTooShort",
        title="The passphrase is too short",
        message="The passphrase has {length} characters; it needs at least {minimum}.",
        causes=("A short passphrase can be guessed by someone who gets a copy of the vault's data.",),
        actions=(
            "Choose a passphrase of at least {minimum} characters, for example several unrelated"
            " words, and keep it in a password manager: nobody can recover it for you.",
        ),
        http_status=422,
        exit_code=2,
        area="agent",
    ),
    CatalogEntry(
        code="AgentPassphraseMismatch",
        title="The two passphrases differ",
        message="The passphrase and its confirmation are not the same.",
        causes=("One of the two was mistyped.",),
        actions=("Run the command again and type the same passphrase twice.",),
        http_status=422,
        exit_code=2,
        area="agent",
    ),
    CatalogEntry(
        code="AgentAlreadyRunning",
        title="Another agent process is running",
        message="Another agent process (pid {pid}) already runs with the scratch folder {path}.",
        causes=(
            "The agent service runs and `kluis agent run` was started by hand as well.",
            "Two service units point at the same configuration.",
        ),
        actions=(
            "Stop the extra process; one agent per machine is enough (`systemctl status kluis-agent`).",
        ),
        http_status=409,
        exit_code=8,
        area="agent",
        doctor_check="agent-service",
    ),
    CatalogEntry(
        code="AgentRestartedDuringJob",
        title="The agent restarted while a job ran",
        message="Job {job} stopped because the agent restarted while it ran (started {started}).",
        causes=(
            "The agent service was restarted or stopped (an update, `systemctl restart`, a reboot).",
            "The agent process was killed, for example by the out-of-memory killer.",
        ),
        actions=(
            "Run the job again (`kluis backup now ITEM`); a backup resumes from the data already"
            " in the vault.",
            "If the agent was killed, look for the reason with `journalctl -u kluis-agent` and"
            " `dmesg | grep -i oom`.",
        ),
        http_status=500,
        exit_code=9,
        area="agent",
    ),
    CatalogEntry(
        code="AgentJobUnsupported",
        title="The agent cannot run this kind of job",
        message="Job {job} asks for {what}, which this agent does not support.",
        causes=(
            "The vault is newer than the agent and sends a kind of work the agent does not know.",
            "The protected item is of a kind this machine's agent cannot back up.",
        ),
        actions=(
            "Update the agent to the version the vault expects.",
            "Protect the data with an item kind the agent supports (`kluis protect files PATH`).",
        ),
        http_status=409,
        exit_code=10,
        area="agent",
    ),
    CatalogEntry(
        code="AgentInternalError",
        title="Unexpected error in the agent",
        message="The agent met an unexpected error while running job {job}; reference {ref}.",
        causes=("A fault in Kluis itself, or in a library it uses.",),
        actions=(
            "Run the job again.",
            "The details are in the agent's log under the reference (`journalctl -u kluis-agent |"
            " grep REF`); report them if it keeps happening.",
        ),
        http_status=500,
        exit_code=1,
        area="agent",
    ),
    CatalogEntry(
        code="RestoreSourcePassphraseMissing",
        title="The source machine's passphrase is needed",
        message="To restore data of machine {source} on this machine, the agent needs that machine's"
        " passphrase; none is stored here.",
        causes=(
            "Data is restored on another machine than the one it was backed up from, and the"
            " source machine's passphrase was not given to this machine's agent.",
        ),
        actions=(
            "On this machine run `kluis agent source-passphrase {source}` and type the passphrase"
            " that was set when machine {source} was registered.",
            "Then start the restore again.",
        ),
        http_status=409,
        exit_code=3,
        area="agent",
    ),
    CatalogEntry(
        code="RestoreSourcePassphraseWrong",
        title="The source machine's passphrase is wrong",
        message="The passphrase stored for machine {source} does not unlock its key set.",
        causes=(
            "The passphrase was mistyped, or it belongs to another machine.",
            "The source machine's passphrase was changed after it was given here.",
        ),
        actions=(
            "Give the passphrase again with `kluis agent source-passphrase {source}`, then start"
            " the restore again.",
        ),
        http_status=403,
        exit_code=3,
        area="agent",
    ),
]
