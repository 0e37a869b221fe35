"""Quiescing and snapshots, instant recovery points and their collection (seeds 000, 001, 002, 004).

The seeds' VSS writers in a bad state map to a failing pre- or post-script (the
application hooks that make a snapshot application-consistent); SQL Server's slow
VSS backup maps to a pre-script that takes too long; shadow copy storage and the
storage account's free space map to copy-on-write space for the snapshot; a COM+
error during the snapshot maps to the snapshot tool failing.
"""

from kluis.catalog.entry import CatalogEntry, Severity

ENTRIES = [
    CatalogEntry(
        code="UserErrorFsFreezeFailed",
        title="File systems could not be frozen for a consistent snapshot",
        message="Freezing the mount point {mountpoint} for a consistent snapshot failed: {reason}.",
        causes=(
            "The file system has errors and its state is not clean.",
            "The file system does not support freezing, or it is already frozen by another tool.",
            "A process kept writing and the freeze did not complete within the time limit.",
        ),
        actions=(
            "Check the file system state, for example `tune2fs -l DEVICE | grep 'Filesystem state'`.",
            "Unmount file systems whose state is not clean (`umount`), repair them with `fsck`, and"
            " mount them again.",
            "Exclude mount points that cannot be frozen in the item's `skip_mounts`, then run the"
            " backup again.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("000",),
        area="snapshot",
        doctor_check="snapshot-prerequisites",
    ),
    CatalogEntry(
        code="QuiesceScriptFailed",
        title="A pre- or post-snapshot script failed",
        message="The {phase} script {script} ended with exit code {exit_code}; the snapshot is not"
        " application-consistent.",
        causes=(
            "The application the script prepares (a database, a queue) is in a bad state or not running.",
            "The script has an error or depends on something missing.",
        ),
        actions=(
            "Run the script by hand as root to see its output, and fix the application or the script.",
            "Restart the application's service, then run the backup again.",
            "Set `continue_on_failure = true` for the script if a file-system-consistent snapshot is"
            " good enough.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("000", "004"),
        seed_codes=("ExtensionFailedVssWriterInBadState",),
        area="snapshot",
    ),
    CatalogEntry(
        code="QuiesceScriptTimeout",
        title="A pre-snapshot script took too long",
        message="The {phase} script {script} did not finish within {seconds} seconds and was stopped.",
        causes=(
            "The application needs longer to reach a consistent state, for example a database that"
            " runs its own backup at the same time.",
            "The machine is short of CPU or memory.",
        ),
        actions=(
            "Move the application's own backup to another time than the Kluis backup.",
            "Raise the script's `timeout` in the quiesce configuration.",
            "Run the backup at a quieter time.",
        ),
        http_status=504,
        exit_code=9,
        seeds=("000", "001"),
        area="snapshot",
    ),
    CatalogEntry(
        code="SnapshotProviderFailed",
        title="The snapshot could not be taken",
        message="The snapshot provider {provider} failed for {device}: {reason}.",
        causes=(
            "The snapshot tool (btrfs, lvcreate, qemu-img, cp --reflink) returned an error.",
            "The device or image changed while the snapshot was being set up.",
        ),
        actions=(
            "Run the backup again.",
            "Run the tool by hand with the same arguments (they are in `journalctl -u kluis-agent`)"
            " to see its error.",
            "If it keeps failing, restart the machine, then uninstall the extension with `kluis"
            " extension uninstall snapshot` so the next backup reinstalls it.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("000", "004"),
        area="snapshot",
        seed_codes=("UserErrorCrpReportedUserError",),
    ),
    CatalogEntry(
        code="SnapshotSpaceInsufficient",
        title="Not enough space to hold the snapshot",
        message="The snapshot of {device} needs {needed} of free space in {pool}, but {free} is free.",
        causes=(
            "The volume group, thin pool or file system holding the snapshot is nearly full.",
            "The data changes faster during the backup than the snapshot's space can absorb.",
        ),
        actions=(
            "Keep at least half of the pool free for snapshots (`vgs`, `lvs` or `df -h` show usage).",
            "Extend the pool or free space in it, then run the backup again.",
        ),
        http_status=507,
        exit_code=6,
        seeds=("000", "003"),
        area="snapshot",
        doctor_check="snapshot-prerequisites",
    ),
    CatalogEntry(
        code="GuestAgentSnapshotTaskStatusError",
        title="The snapshot status could not be obtained from the agent",
        message="The vault lost contact with the agent on {machine} while the snapshot task ran; the"
        " task's status is unknown after {seconds} seconds.",
        causes=(
            "The agent hangs or was restarted during the snapshot.",
            "The agent is outdated.",
            "The snapshot could not be taken or was delayed, for example because the machine runs"
            " above 90% CPU or memory.",
            "An agent configuration option (extensions switched off) stops the snapshot task.",
            "A security policy stops the extension from running.",
        ),
        actions=(
            "Check the agent with `systemctl status kluis-agent` and restart it if needed.",
            "Update the agent if it is outdated.",
            "Run the backup at a quieter time, or start it on demand now with `kluis backup now ITEM`.",
            "Run `kluis doctor` to check the agent's configuration and the extension.",
        ),
        http_status=504,
        exit_code=9,
        seeds=("000", "001", "002", "004"),
        area="snapshot",
        doctor_check="agent-service",
    ),
    CatalogEntry(
        code="UserErrorRpCollectionLimitReached",
        title="The restore point collection is full",
        message="Machine {machine} already keeps {count} instant recovery points, the limit of"
        " {limit}; no new snapshot can be kept.",
        causes=(
            "A lock on the restore point collection stops expired instant recovery points from being"
            " cleaned up.",
            "Several backups a day, while instant recovery points are kept 1 to 5 days and at most 18"
            " can exist per machine.",
        ),
        actions=(
            "Remove the lock with `kluis points unlock ITEM`.",
            "Start a backup with `kluis backup now ITEM`: it cleans up expired instant recovery"
            " points first (it may fail once while the clean-up runs).",
            "Or delete old instant recovery points by hand with `kluis points prune ITEM`.",
            "Keep to one scheduled backup a day, or shorten the instant recovery point retention.",
        ),
        http_status=409,
        exit_code=8,
        seeds=("002", "004"),
        area="snapshot",
        doctor_check="restore-point-collection",
    ),
    CatalogEntry(
        code="RestorePointCollectionLocked",
        title="The restore point collection is locked",
        message="The restore point collection of {item} is locked, so expired instant recovery"
        " points cannot be cleaned up.",
        causes=("Someone locked the collection with `kluis points lock` and did not unlock it.",),
        actions=(
            "Remove the lock with `kluis points unlock ITEM` unless it is still needed.",
            "Then clean up with an on-demand backup (`kluis backup now ITEM`) or `kluis points prune ITEM`.",
        ),
        http_status=409,
        exit_code=8,
        seeds=("002", "004"),
        area="snapshot",
        doctor_check="restore-point-collection",
    ),
    CatalogEntry(
        code="RestorePointCleanupIncomplete",
        title="Clean-up of instant recovery points was not finished",
        message="Cleaning up the restore point collection of {item} stopped after the time limit;"
        " {remaining} recovery points are still to be deleted.",
        causes=(
            "The collection held many recovery points and deleting them all takes longer than one"
            " run allows.",
        ),
        actions=(
            "Run `kluis points prune ITEM` until it reports that nothing is left; give it more"
            " time with `--time-limit SECONDS`.",
        ),
        severity=Severity.WARNING,
        http_status=200,
        exit_code=0,
        seeds=("002", "004"),
        area="snapshot",
    ),
]
