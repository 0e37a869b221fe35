"""Read-only btrfs subvolume snapshots of the subvolume that holds a VM's disk images.

One ``btrfs subvolume snapshot -r`` captures every image in the subvolume at the
same instant, so a VM with several disks gets one consistent point. The snapshot is
kept in ``.kluis-snapshots/<id>`` inside the subvolume (a nested subvolume, so it is
not part of later snapshots). Changed ranges between two snapshots come from the
extent maps of the image's two copies, which share unchanged extents.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..fiemap import changed_between
from ..mounts import mount_of
from .base import DiskRef, DiskSnapshot, Provider, Snapshot, run_tool

SNAPSHOT_DIR = ".kluis-snapshots"
# Every btrfs subvolume's root directory has this inode number.
SUBVOLUME_ROOT_INODE = 256


def subvolume_root(path: str) -> Path:
    """The root directory of the btrfs subvolume that holds ``path``."""
    p = Path(os.path.realpath(path))
    if not p.is_dir():
        p = p.parent
    dev = p.stat().st_dev
    while True:
        st = p.stat()
        if st.st_ino == SUBVOLUME_ROOT_INODE and st.st_dev == dev:
            return p
        if p.parent == p or p.parent.stat().st_dev != dev:
            return p  # a mount point is a subvolume root too
        p = p.parent


class BtrfsSubvolumeProvider(Provider):
    """Read-only snapshots of the btrfs subvolume that holds the images."""

    name = "btrfs"

    def unusable_reason(self, disks: list[DiskRef]) -> str | None:
        """Needs image files in one btrfs subvolume and the ``btrfs`` tool."""
        roots: set[Path] = set()
        for disk in disks:
            if disk.format == "block":
                return f"{disk.path} is a block device; btrfs snapshots hold image files"
            fstype = mount_of(disk.path).fstype
            if fstype != "btrfs":
                return f"{disk.path} is on {fstype}, not btrfs"
            roots.add(subvolume_root(disk.path))
        if len(roots) != 1:
            return "the images lie in different btrfs subvolumes"
        if shutil.which("btrfs") is None:
            return "the btrfs tool (btrfs-progs) is not installed"
        return None

    def create(self, disks: list[DiskRef], snapshot_id: str) -> Snapshot:
        """One read-only snapshot of the subvolume."""
        root = subvolume_root(disks[0].path)
        holder = root / SNAPSHOT_DIR
        holder.mkdir(mode=0o700, exist_ok=True)
        dest = holder / snapshot_id
        run_tool(self.name, str(root), ["btrfs", "subvolume", "snapshot", "-r", str(root), str(dest)])
        out: list[DiskSnapshot] = []
        for disk in disks:
            rel = os.path.relpath(os.path.realpath(disk.path), root)
            copy = dest / rel
            out.append(
                DiskSnapshot(disk.name, disk.path, str(copy), copy.stat().st_size, {"file": str(copy)})
            )
        return Snapshot(snapshot_id, self.name, time.time(), out, {"subvolume": str(dest), "root": str(root)})

    def delete(self, snapshot: Snapshot) -> None:
        """Delete the snapshot subvolume."""
        dest = snapshot.data.get("subvolume")
        if dest and os.path.exists(dest):
            run_tool(self.name, dest, ["btrfs", "subvolume", "delete", dest])

    def changed_extents(
        self, previous: Snapshot, current: Snapshot, disk: str
    ) -> list[tuple[int, int]] | None:
        """Compare the extent maps of the image in both snapshots."""
        prev, cur = previous.disk(disk), current.disk(disk)
        if os.path.realpath(prev.source) != os.path.realpath(cur.source):
            return None
        if not (os.path.exists(prev.data["file"]) and os.path.exists(cur.data["file"])):
            return None
        return changed_between(prev.data["file"], cur.data["file"])
