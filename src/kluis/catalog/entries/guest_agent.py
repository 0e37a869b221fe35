"""The agent inside a machine or VM (the seeds' VM guest agent): running, current, configured.

Seeds 000, 001, 002 and 004. The seeds' Windows service checks (services.msc,
Programs and Features, the MSI, .NET 4.5) become the agent's systemd unit and its
package; MachineKeys folder permissions become the permissions of the agent's key
directory.
"""

from kluis.catalog.entry import CatalogEntry, Severity

ENTRIES = [
    CatalogEntry(
        code="UserErrorGuestAgentStatusUnavailable",
        title="The agent in the machine does not report its status",
        message="The agent on {machine} did not report its status to the vault (last heartbeat"
        " {last_seen}), so the backup could not start.",
        causes=(
            "The agent service is stopped, hangs, or is in an inconsistent state.",
            "The agent is outdated and no longer speaks the vault's protocol.",
            "The snapshot status could not be retrieved, or a snapshot could not be taken.",
            "The snapshot extension fails to install, update or load.",
            "The machine has no network path to the vault.",
        ),
        actions=(
            "Check the service with `systemctl status kluis-agent` and restart it with `systemctl"
            " restart kluis-agent`.",
            "Update the agent from your distribution's or Kluis's package repository.",
            "Check the extension states with `kluis extension list`; uninstall a failed one with"
            " `kluis extension uninstall NAME` so the next backup reinstalls it.",
            "Run `kluis doctor` on the machine to test the path to the vault.",
            "Run the backup again with `kluis backup now ITEM`.",
        ),
        http_status=503,
        exit_code=9,
        seeds=("000", "002", "004"),
        area="guest_agent",
        doctor_check="agent-service",
    ),
    CatalogEntry(
        code="AgentUnresponsive",
        title="The agent does not respond",
        message="The agent on {machine} has missed {missed} heartbeats and is marked unresponsive.",
        causes=(
            "The agent process hangs or was stopped.",
            "The machine is off, suspended or cut off from the network.",
            "The agent's installation is damaged.",
        ),
        actions=(
            "On the machine, run `systemctl status kluis-agent` and `journalctl -u kluis-agent`.",
            "Restart the agent with `systemctl restart kluis-agent`.",
            "If it does not stay up, reinstall the agent package, then run `kluis backup now ITEM` to check.",
        ),
        http_status=503,
        exit_code=9,
        seeds=("000", "002"),
        area="guest_agent",
        doctor_check="agent-service",
    ),
    CatalogEntry(
        code="AgentOutdated",
        title="The agent is outdated",
        message="The agent on {machine} runs version {version}; the vault needs at least {minimum}.",
        causes=(
            "The agent package was not updated when the vault was.",
            "Most agent and extension failures come from old agents.",
        ),
        actions=(
            "Update the agent with your package manager, from your distribution's or Kluis's"
            " repository only; do not copy files by hand.",
            "Restart it with `systemctl restart kluis-agent`.",
            "Make sure no backup runs while you update.",
        ),
        http_status=426,
        exit_code=9,
        seeds=("000", "001", "002", "003", "004"),
        area="guest_agent",
        doctor_check="agent-service",
    ),
    CatalogEntry(
        code="AgentServiceNotEnabled",
        title="The agent does not start at boot",
        message="The agent service on {machine} is not enabled, so it will not run after the next reboot.",
        causes=(
            "The unit was installed but never enabled, or it was disabled.",
            "The unit has no restart policy, so a crash leaves it stopped.",
        ),
        actions=(
            "Enable and start it: `systemctl enable --now kluis-agent`.",
            "Keep `Restart=on-failure` in the unit so the agent comes back after a crash.",
        ),
        severity=Severity.WARNING,
        http_status=200,
        exit_code=0,
        seeds=("001", "002"),
        area="guest_agent",
        doctor_check="agent-service",
    ),
    CatalogEntry(
        code="AgentConfigOptionInvalid",
        title="An agent configuration option blocks backups",
        message="The agent option {option} in {config} is {value}; backups need {expected}.",
        causes=(
            "The option was changed by hand or by configuration management.",
            "The configuration comes from an image made for another purpose.",
        ),
        actions=(
            "Set {option} to {expected} in {config}.",
            "Restart the agent with `systemctl restart kluis-agent` and run the backup again.",
        ),
        http_status=409,
        exit_code=2,
        seeds=("004",),
        area="guest_agent",
        doctor_check="agent-config",
    ),
    CatalogEntry(
        code="AgentKeyPermissionsWrong",
        title="Wrong permissions on the agent's key directory",
        message="The agent's key directory {path} has mode {mode} and owner {owner}; it must be"
        " owned by root with mode 0700 and its files 0600.",
        causes=(
            "The permissions were changed by hand, by a restore or by a configuration tool.",
            "The directory was copied from another machine without keeping ownership.",
        ),
        actions=(
            "Reset them: `chown -R root:root PATH && chmod 0700 PATH && chmod 0600 PATH/*`.",
            "Restart the agent with `systemctl restart kluis-agent` and run the backup again.",
        ),
        http_status=500,
        exit_code=3,
        seeds=("000",),
        area="guest_agent",
        doctor_check="agent-config",
    ),
    CatalogEntry(
        code="OperatingSystemUnsupported",
        title="The operating system is not supported",
        message="The machine runs {os} (kernel {kernel}), which this agent does not support: {reason}.",
        causes=(
            "The distribution or kernel is older than the agent supports.",
            "The kernel lacks a feature the agent needs, such as fsfreeze for consistent snapshots.",
        ),
        actions=(
            "Check the supported systems in `docs/install.md` and update the machine.",
            "Use a files-and-folders backup, which needs fewer kernel features.",
        ),
        http_status=409,
        exit_code=10,
        seeds=("004",),
        area="guest_agent",
        doctor_check="snapshot-os",
    ),
    CatalogEntry(
        code="MachineRebootPending",
        title="The machine waits for a reboot",
        message="Machine {machine} has pending updates that need a reboot ({reason}).",
        causes=("A kernel or system library was updated and the machine was not restarted since.",),
        actions=("Reboot the machine at a convenient time before the next backup.",),
        severity=Severity.WARNING,
        http_status=200,
        exit_code=0,
        seeds=("004",),
        area="guest_agent",
        doctor_check="machine-health",
    ),
]
