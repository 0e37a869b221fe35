"""Scheduled backups that do not run or that pile up on one host (seeds 000, 001, 003).

The seeds' Windows Task Scheduler settings (trigger enabled, run as SYSTEM,
PowerShell execution policy and module path) are all one question here: did the
vault's scheduler create the job, and could the agent pick it up?
"""

from kluis.catalog.entry import CatalogEntry, Severity

ENTRIES = [
    CatalogEntry(
        code="ScheduledBackupNotRun",
        title="A scheduled backup did not run",
        message="The scheduled backup of {item} due at {due} did not run: {reason}.",
        causes=(
            "The item's protection is stopped or its policy has no run at that time.",
            "The agent was stopped or offline when the job was due, so it could not pick it up.",
            "No vault process held the scheduler lease at that time (the vault was down).",
            "The agent service does not run as root or its installation is damaged.",
        ),
        actions=(
            "Check the item's protection state and policy with `kluis items list` and `kluis policy"
            " show NAME`.",
            "Check that the agent runs and starts at boot: `systemctl enable --now kluis-agent`.",
            "On the vault server, run `kluis doctor --vault` to see whether the scheduler lease is held.",
            "Reinstall the agent package if `kluis doctor` reports a damaged installation.",
            "Start the backup by hand with `kluis backup now ITEM` until the cause is fixed.",
        ),
        http_status=200,
        exit_code=1,
        seeds=("003",),
        area="schedule",
        doctor_check="agent-service",
    ),
    CatalogEntry(
        code="ScheduleOverlapOnHost",
        title="Many backups start at once on one host",
        message="{count} machines on host {host} start their backups within the same hour; snapshots"
        " may be delayed until they time out.",
        causes=("Several policies that cover machines on one host have the same start time.",),
        actions=(
            "Give the policies start times at least an hour apart, or split the machines over"
            " several policies.",
        ),
        severity=Severity.WARNING,
        http_status=200,
        exit_code=0,
        seeds=("000", "001"),
        area="schedule",
    ),
]
