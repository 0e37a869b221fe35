"""Job conditions: one backup per item at a time, cancelling jobs, long jobs (seeds 000, 002, 003)."""

from kluis.catalog.entry import CatalogEntry, Severity

ENTRIES = [
    CatalogEntry(
        code="UserErrorBackupOperationInProgress",
        title="Another backup of this item is still running",
        message="A backup of {item} could not start because job {job} is still running for it.",
        causes=(
            "A scheduled or on-demand backup of the item has not finished yet.",
            "The previous backup takes longer than the time between two scheduled runs.",
            "A second trigger (an extra timer or cron entry calling `kluis backup now`) starts the same"
            " backup that the vault's schedule already started.",
            "The machine was registered with another vault before, and a job there still runs on it.",
        ),
        actions=(
            "Wait for the running job to finish, or cancel it with `kluis jobs cancel JOB`"
            " (`kluis jobs list --item ITEM` shows it).",
            "If backups regularly overlap, give the policy more time between runs or a smaller item.",
            "Remove extra timers or cron entries that start backups; the vault's schedule is enough.",
            "Run the backup again with `kluis backup now ITEM`.",
        ),
        http_status=409,
        exit_code=8,
        seeds=("000", "002", "003", "004"),
        area="jobs",
    ),
    CatalogEntry(
        code="JobCancelNotSupported",
        title="This kind of job cannot be cancelled",
        message="Job {job} is of type {kind}, which cannot be cancelled; wait for it to finish.",
        causes=("Jobs of this type change vault state in one step and have nothing to undo halfway.",),
        actions=("Wait for the job to finish; `kluis jobs show JOB` shows its progress.",),
        http_status=409,
        exit_code=8,
        seeds=("000",),
        area="jobs",
    ),
    CatalogEntry(
        code="JobNotCancellable",
        title="The job can no longer be cancelled",
        message="Job {job} is {state} and can no longer be cancelled; wait for it to finish.",
        causes=(
            "The job is almost done: it is committing the recovery point or cleaning up.",
            "A cancel request for the job is already being handled.",
        ),
        actions=("Wait for the job to finish; `kluis jobs show JOB` shows its state.",),
        http_status=409,
        exit_code=8,
        seeds=("000",),
        area="jobs",
    ),
    CatalogEntry(
        code="JobNotInProgress",
        title="The job is not running",
        message="Job {job} is {state}; only a running job can be cancelled.",
        causes=(
            "The job has not started yet or has just finished.",
            "The job is between two states for a moment.",
        ),
        actions=(
            "Check the job's state with `kluis jobs show JOB`.",
            "If it is about to start, wait a moment and cancel it again.",
        ),
        http_status=409,
        exit_code=8,
        seeds=("000",),
        area="jobs",
    ),
    CatalogEntry(
        code="JobCancelFailed",
        title="Cancelling the job failed",
        message="Cancelling job {job} failed: {reason}. The job goes on until it finishes.",
        causes=(
            "The agent running the job did not confirm the cancel in time.",
            "The agent lost its connection to the vault while the job ran.",
        ),
        actions=(
            "Wait for the job to finish; it ends on its own.",
            "Check that the agent is running and can reach the vault (`kluis doctor`).",
        ),
        http_status=409,
        exit_code=8,
        seeds=("000",),
        area="jobs",
    ),
    CatalogEntry(
        code="JobRunningLong",
        title="A job runs much longer than expected",
        message="Job {job} ({kind}) has been running for {hours} hours, longer than the expected {limit}"
        " hours.",
        causes=(
            "The first backup of a large item reads and uploads all of its data.",
            "The machine's disks, CPU or network link are slow or busy, or bandwidth is throttled.",
            "Many machines on one host or link are backed up at the same time.",
        ),
        actions=(
            "Look at the job's phase and rate with `kluis jobs show JOB`.",
            "Spread the start times of policies that share a host or a link.",
            "Raise the bandwidth limits for off-hours in the agent configuration.",
        ),
        severity=Severity.WARNING,
        http_status=200,
        exit_code=0,
        seeds=("000",),
        area="jobs",
    ),
]
