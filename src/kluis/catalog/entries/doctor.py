"""Conditions only ``kluis doctor`` reports: found before a job fails, on the machine or the vault server.

Seeds 001, 002 and 004 ask for the agent to be running and current, for expired
restore points to be cleaned up, and (step by step) for the path from agent to
vault to work. The vault-side entries are the server's own health: migrations,
the scheduler lease, and items whose backups keep failing.
"""

from kluis.catalog.entry import CatalogEntry, Severity

ENTRIES = [
    CatalogEntry(
        code="AgentNotRunning",
        title="The agent is not running on this machine",
        message="No agent process runs for the scratch folder {path} on {machine}: {reason}.",
        causes=(
            "The agent service was stopped, or it never started after a reboot.",
            "The agent crashed and its service has no restart policy.",
            "The agent was started by hand in a terminal that has since closed.",
        ),
        actions=(
            "Start it: `systemctl restart kluis-agent` (or `kluis doctor --fix`, which restarts it).",
            "Look at why it stopped: `journalctl -u kluis-agent -n 100`.",
            "Enable it at boot with `systemctl enable kluis-agent`.",
        ),
        http_status=503,
        exit_code=9,
        seeds=("001", "002", "004"),
        area="guest_agent",
        doctor_check="agent-service",
    ),
    CatalogEntry(
        code="AgentRestartNeeded",
        title="The running agent is older than the installed one",
        message="The agent process on {machine} runs version {running}, but version {installed} is"
        " installed; the new version is used only after a restart.",
        causes=("The agent package was updated while the agent kept running.",),
        actions=(
            "Restart the agent when no backup runs: `systemctl restart kluis-agent` (or"
            " `kluis doctor --fix`).",
        ),
        severity=Severity.WARNING,
        http_status=200,
        exit_code=0,
        seeds=("002", "004"),
        area="guest_agent",
        doctor_check="agent-version",
    ),
    CatalogEntry(
        code="InstantPointsExpired",
        title="Expired instant recovery points are still kept",
        message="The restore point collection of {item} keeps {count} instant recovery points whose"
        " retention has passed; they use space until they are cleaned up.",
        causes=(
            "No disk backup of the item ran since they expired; clean-up happens before each snapshot.",
            "Deleting a snapshot failed during the last clean-up, so it is tried again later.",
        ),
        actions=(
            "Clean them up now with `kluis doctor --fix`, or run a backup with `kluis backup now ITEM`.",
        ),
        severity=Severity.WARNING,
        http_status=200,
        exit_code=0,
        seeds=("002", "004"),
        area="snapshot",
        doctor_check="restore-point-collection",
    ),
    CatalogEntry(
        code="SchedulerLeaseNotHeld",
        title="No vault process runs the scheduler",
        message="No vault process holds the scheduler lease of vault {vault} ({reason}), so scheduled"
        " backups, retention and garbage collection do not run.",
        causes=(
            "The vault service is stopped, or every vault process has the scheduler switched off.",
            "The process holding the lease crashed or hangs and no other process took over yet.",
            "The vault processes cannot write to the database, so the lease is not renewed.",
        ),
        actions=(
            "Start the vault: `systemctl start kluis-vault`, and check `journalctl -u kluis-vault`.",
            "Make sure at least one vault process has `enabled = true` under `[scheduler]` in its"
            " vault.toml.",
            "Run `kluis doctor --vault` again after one scheduler interval; a live process takes"
            " over an expired lease by itself.",
        ),
        http_status=503,
        exit_code=9,
        area="vault",
        doctor_check="scheduler-lease",
    ),
    CatalogEntry(
        code="VaultMigrationsPending",
        title="The vault database is not at the current schema",
        message="The vault database {url} is at schema revision {current}, but this Kluis needs"
        " revision {head}.",
        causes=(
            "Kluis was updated and no vault process has started since, so the database was not migrated yet.",
            "The database was restored from a backup made with an older Kluis.",
            "A vault process of a newer Kluis migrated the database past this version.",
        ),
        actions=(
            "Restart the vault (`systemctl restart kluis-vault`); it migrates the database when it starts.",
            "If the database is newer than this Kluis, install the same Kluis version on every vault"
            " process.",
        ),
        http_status=503,
        exit_code=9,
        area="vault",
        doctor_check="vault-migrations",
    ),
    CatalogEntry(
        code="ItemBackupsFailing",
        title="An item's backups keep failing",
        message="The last {count} backups of {item} on machine {machine} failed; the newest ended"
        " with {code}.",
        causes=(
            "The same condition stops every backup of the item; the newest job's error names it.",
            "The agent on the machine is stopped, outdated or cannot reach the vault.",
        ),
        actions=(
            "Read the newest failed job with `kluis jobs show JOB` and follow its actions.",
            "Run `kluis doctor` on the machine, fix what it reports, then run `kluis backup now ITEM`.",
        ),
        http_status=409,
        exit_code=1,
        seeds=("000", "002", "004"),
        area="jobs",
        doctor_check="failing-items",
    ),
    CatalogEntry(
        code="DoctorCheckFailed",
        title="A doctor check could not run",
        message="The check {check} could not run to the end: {reason}.",
        causes=(
            "Something on the machine is in a state the check did not expect.",
            "A defect in Kluis.",
        ),
        actions=(
            "Run `kluis doctor --json` and keep its output; the other checks still ran.",
            "Report the problem with that output and the agent's log (`journalctl -u kluis-agent`).",
        ),
        http_status=500,
        exit_code=1,
        area="agent",
    ),
]
