"""Per-file conditions met during a files-and-folders backup (seed 003, failed-files log).

These are warnings: the file is skipped and written to the failed-files log, the
backup goes on and ends "completed with warnings". The codes are the ones the
source documents use for the same conditions.
"""

from kluis.catalog.entry import CatalogEntry, Severity

ENTRIES = [
    CatalogEntry(
        code="0x80070570",
        title="File or folder is damaged and cannot be read",
        message="Skipped {path}: reading it failed with an I/O error ({reason}).",
        causes=(
            "The file system holding the file has errors or the disk has bad sectors.",
            "The file sits on a device that returned a read error.",
        ),
        actions=(
            "Check the kernel log (`dmesg`) for I/O errors on the source device.",
            "Unmount the file system and run its checker (`fsck -f` for ext4, `xfs_repair` for XFS,"
            " `btrfs check` for btrfs), then run the backup again.",
        ),
        severity=Severity.WARNING,
        seeds=("003",),
        area="files",
    ),
    CatalogEntry(
        code="0x80070002",
        title="File not found",
        message="Skipped {path}: it disappeared between listing and reading.",
        causes=(
            "The file was deleted or renamed while the backup ran (temporary files often are).",
            "The volume that held the file was unmounted during the backup.",
            "The scratch folder is full or its volume is gone, so the agent lost track of the file.",
        ),
        actions=(
            "If the file is temporary, exclude it with an exclusion pattern.",
            "Check that the scratch folder's volume exists and has free space (`kluis doctor`).",
            "Make sure no other software (a cleaner, an antivirus scanner) removes files during backups.",
        ),
        severity=Severity.WARNING,
        seeds=("003",),
        area="files",
    ),
    CatalogEntry(
        code="0x80070005",
        title="Access to a file was denied",
        message="Skipped {path}: permission denied ({reason}).",
        causes=(
            "The agent does not run as root, or the file is protected by an access policy"
            " (SELinux, AppArmor, an immutable attribute).",
            "Another program holds the file in a way that refuses readers.",
        ),
        actions=(
            "Run the agent as root (the systemd unit does so).",
            "Check the security module's audit log (`ausearch -m avc`, `journalctl -k`) for denials"
            " of the agent and allow it to read the path.",
            "Exclude the path if it should not be backed up.",
        ),
        severity=Severity.WARNING,
        seeds=("003",),
        area="files",
    ),
    CatalogEntry(
        code="0x8007018b",
        title="Online-only or network file could not be fetched",
        message="Skipped {path}: the file lives on a network or on-demand file system that did not"
        " deliver its data ({reason}).",
        causes=(
            "The path is on a FUSE or network mount (rclone, sshfs, NFS, a sync client) whose"
            " remote end is offline.",
            "The file is a placeholder whose content is only fetched on demand.",
        ),
        actions=(
            "Back up such data where it really lives, or make it available locally first.",
            "Exclude the mount point, or use one-file-system mode so network mounts are not crossed.",
        ),
        severity=Severity.WARNING,
        seeds=("003",),
        area="files",
    ),
    CatalogEntry(
        code="FileChangedWhileReading",
        title="File changed while it was read",
        message="{path} changed while it was being backed up; the copy in this recovery point may be"
        " inconsistent.",
        causes=("A program wrote to the file during the backup.",),
        actions=(
            "Use a disk backup with a snapshot for files that are written all the time (databases).",
            "Stop the writing program during the backup with a pre-script, or exclude the file.",
        ),
        severity=Severity.WARNING,
        area="files",
    ),
    CatalogEntry(
        code="SpecialFileSkipped",
        title="Socket skipped",
        message="Skipped {path}: sockets cannot be backed up; the program that owns it recreates it.",
        causes=("The folder contains a Unix socket.",),
        actions=("No action needed. Exclude the path to silence this warning.",),
        severity=Severity.INFO,
        seeds=("003",),
        area="files",
    ),
]
