"""The snapshot extension's own conditions: quiesce configuration and scripts, the freeze
watchdog, provider choice, and the VM host configuration (seeds 000, 001, 002, 004).

The seeds' VSS writer and SQL Server cases are pre- and post-scripts here (see
``snapshot.py`` for their failure and timeout); these entries cover what must be in
place before a script may run at all, and what happens when no snapshot method fits
a disk.
"""

from kluis.catalog.entry import CatalogEntry, Severity

ENTRIES = [
    CatalogEntry(
        code="QuiesceConfigUnsafe",
        title="The quiesce configuration file is not protected",
        message="The quiesce configuration {path} belongs to {owner} with mode {mode}; it must belong"
        " to root and give no access to group or others (0600).",
        causes=(
            "The file was created or copied by another user, or its mode was changed.",
            "Anyone who can change it could make the agent run a program as root.",
        ),
        actions=(
            "Check who changed the file and whether its content is still what you expect.",
            "Fix it with `chown root:root {path}` and `chmod 0600 {path}`, then run the backup again.",
        ),
        http_status=500,
        exit_code=3,
        seeds=("000",),
        area="snapshot",
        doctor_check="snapshot-prerequisites",
    ),
    CatalogEntry(
        code="QuiesceConfigInvalid",
        title="The quiesce configuration file cannot be read",
        message="The quiesce configuration {path} is not valid: {reason}.",
        causes=(
            "The file is not valid TOML, or a setting has the wrong type or an unknown name.",
            "A time limit is zero, negative or not a number.",
        ),
        actions=(
            "Correct the setting the message names; `docs/snapshots.md` lists every setting.",
            "Run the backup again.",
        ),
        http_status=500,
        exit_code=2,
        area="snapshot",
        doctor_check="snapshot-prerequisites",
    ),
    CatalogEntry(
        code="QuiesceScriptMissing",
        title="A pre- or post-snapshot script does not exist",
        message="The {phase} script {script} named in the quiesce configuration does not exist.",
        causes=(
            "The script was moved, renamed or deleted, or the path in the configuration has a typo.",
            "The application package that installed the script was removed.",
        ),
        actions=(
            "Put the script back at {script}, or correct its path in the quiesce configuration.",
            "Or remove the `{phase}` section if the application no longer needs it.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("000",),
        area="snapshot",
        doctor_check="snapshot-prerequisites",
    ),
    CatalogEntry(
        code="QuiesceScriptUnsafe",
        title="A pre- or post-snapshot script is not protected",
        message="The {phase} script {script} belongs to {owner} with mode {mode}; it must belong to"
        " root, be executable by root and give no access to group or others (0700).",
        causes=(
            "The script was created or edited by another user, or its mode was changed.",
            "Anyone who can change it could make the agent run a program as root.",
        ),
        actions=(
            "Check the script's content, then fix it with `chown root:root {script}` and `chmod 0700"
            " {script}`.",
            "Run the backup again.",
        ),
        http_status=500,
        exit_code=3,
        seeds=("000",),
        area="snapshot",
        doctor_check="snapshot-prerequisites",
    ),
    CatalogEntry(
        code="FreezeWatchdogFailed",
        title="The freeze watchdog could not be started",
        message="The watchdog that thaws frozen file systems could not be started, so nothing was"
        " frozen: {reason}.",
        causes=(
            "The machine is out of processes or memory.",
            "The agent's Python installation is damaged.",
        ),
        actions=(
            "Check free memory and the process count (`free -h`, `ps -e | wc -l`).",
            "Reinstall the agent package, then run the backup again.",
        ),
        http_status=500,
        exit_code=9,
        area="snapshot",
    ),
    CatalogEntry(
        code="FreezeWindowExceeded",
        title="The snapshot took longer than the freeze may last",
        message="Taking the snapshot of {item} took {seconds} seconds while file systems were frozen,"
        " longer than safe_freeze_wait_seconds ({limit}); the watchdog thawed them and the recovery"
        " point is only crash-consistent.",
        causes=(
            "The snapshot tool was slow, for example because the storage under the disk images is busy.",
            "The limit is set lower than a snapshot needs on this machine.",
        ),
        actions=(
            "Run the backup at a quieter time.",
            "Raise `safe_freeze_wait_seconds` in the quiesce configuration; keep it as short as"
            " applications can bear, since writes wait while frozen.",
        ),
        severity=Severity.WARNING,
        http_status=200,
        exit_code=0,
        seeds=("000",),
        area="snapshot",
    ),
    CatalogEntry(
        code="SnapshotProviderUnavailable",
        title="No snapshot method fits the disk",
        message="Disk {disk} cannot be snapshotted: {missing}.",
        causes=(
            "The disk is a block device that is not an LVM logical volume, or LVM cannot run because"
            " the kernel has no device-mapper.",
            "The disk image lies on a file system without reflink or subvolume snapshots (for"
            " example ext4), and it is not a qcow2 image.",
            "A tool the method needs (btrfs-progs, lvm2, qemu-utils) is not installed.",
        ),
        actions=(
            "Put the disk on LVM (with free space in the volume group or a thin pool), or keep disk"
            " images on XFS formatted with reflink (`mkfs.xfs -m reflink=1`) or on btrfs.",
            "Install the missing tool with your package manager.",
            "Or protect the data with a files-and-folders backup instead.",
        ),
        http_status=422,
        exit_code=10,
        seeds=("000",),
        area="snapshot",
        doctor_check="snapshot-prerequisites",
    ),
    CatalogEntry(
        code="VmConfigInvalid",
        title="The VM host configuration is not valid",
        message="The VM configuration {path} is not valid: {reason}.",
        causes=(
            "The file is not valid TOML, or a setting is missing, misspelt or has the wrong type.",
            "A disk's format is not `raw` or `qcow2`.",
        ),
        actions=(
            "Correct the setting the message names; `docs/snapshots.md` shows a complete example.",
            "Run the backup again.",
        ),
        http_status=500,
        exit_code=2,
        area="snapshot",
    ),
    CatalogEntry(
        code="VmGuestAgentUnavailable",
        title="The VM's guest agent cannot be reached",
        message="The guest agent of VM {vm} ({address}) cannot be reached: {reason}; its file systems"
        " were not frozen.",
        causes=(
            "The VM is stopped, or its guest agent is not installed or not running.",
            "The host configuration names the wrong way to reach the guest agent.",
        ),
        actions=(
            "Start the guest agent inside the VM and check the `guest_agent` setting of the VM's"
            " host configuration.",
            "Set `continue_on_failure = true` in the quiesce configuration if a crash-consistent"
            " recovery point is acceptable until it is fixed.",
        ),
        http_status=503,
        exit_code=9,
        seeds=("000", "001", "002", "004"),
        area="snapshot",
    ),
]
