"""Mounting recovery points for file-level recovery (seed 003).

The seeds' iSCSI recovery volume becomes a read-only FUSE mount of the point, and for
disk points read-only loop devices with their file systems mounted.
"""

from kluis.catalog.entry import CatalogEntry

ENTRIES = [
    CatalogEntry(
        code="RecoveryMountFailed",
        title="The recovery point could not be mounted",
        message="Mounting recovery point {point} on {mountpoint} failed: {reason}.",
        causes=(
            "FUSE is not available: the fuse3 package is missing or `/dev/fuse` does not exist.",
            "The mount point does not exist, is not empty, or is already in use.",
            "An earlier mount is stuck and still holds the mount point.",
        ),
        actions=(
            "Install FUSE (`apt-get install fuse3`) and check that `/dev/fuse` exists.",
            "Use an empty directory as the mount point.",
            "Release a stuck mount with `fusermount3 -u MOUNTPOINT`, then mount again.",
            "If it still fails, restart the agent, or restore the files to a directory with `kluis"
            " restore` instead.",
        ),
        http_status=500,
        exit_code=9,
        seeds=("003",),
        area="restore",
    ),
]
