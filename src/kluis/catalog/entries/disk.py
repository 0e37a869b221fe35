"""Conditions of disk-image backup and restore: block maps, disks in a point, restore targets.

Reading the source disk fails with ``DiskSourceUnreadable`` (entries/repository.py);
a disk over the size limit with ``UserErrorUnsupportedDiskSize`` (entries/vm_backup.py).
"""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="DiskBlockMapCorrupt",
        title="Block map of a disk damaged",
        message="The block map in {where} cannot be used: {reason}.",
        causes=(
            "The map segment decrypted correctly but its content is not a valid block map, which"
            " only a bug or a forged recovery point produces.",
            "The recovery point's list of map segments was altered.",
        ),
        actions=(
            "Run `kluis verify --read-data` to list every recovery point that shares the segment.",
            "Restore the disk from another recovery point.",
            "Run a new full backup of the disk (without changed extents) so a fresh map is stored.",
        ),
        exit_code=5,
        area="disk",
    ),
    CatalogEntry(
        code="DiskNotInPoint",
        title="The recovery point has no such disk",
        message="Recovery point {point} holds no disk named {disk} (its disks: {available}).",
        causes=(
            "The disk name is mistyped.",
            "The recovery point is a files-and-folders point, or one of another machine.",
        ),
        actions=("List the point's disks with `kluis points show POINT` and use one of those names.",),
        http_status=404,
        exit_code=4,
        area="disk",
    ),
    CatalogEntry(
        code="DiskRestoreTargetTooSmall",
        title="Restore target device is smaller than the disk",
        message="Block device {target} holds {target_size} bytes, but disk {disk} needs {size} bytes;"
        " nothing was written.",
        causes=(
            "Another, smaller device or partition was chosen as the target.",
            "The target volume was created smaller than the disk that was backed up.",
        ),
        actions=(
            "Choose a device at least as large as the disk, or grow the target volume first.",
            "Or restore to an image file (it is written sparse) and copy what you need from it.",
        ),
        http_status=422,
        exit_code=2,
        area="disk",
    ),
]
