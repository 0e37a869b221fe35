"""Reflink copies of disk image files on XFS (``mkfs.xfs -m reflink=1``) or btrfs.

A reflink copy (the FICLONE ioctl, what ``cp --reflink=always`` does) shares every
data extent with the image, so it is instant and takes no space until the image is
written. The copy is read-only and lies next to the image in ``.kluis-snapshots/``;
between two copies of the same image the changed ranges come from their extent maps
(``fiemap.changed_between``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path

from kluis.catalog import KluisError

from ..fiemap import changed_between
from .base import DiskRef, DiskSnapshot, Provider, Snapshot

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
SNAPSHOT_DIR = ".kluis-snapshots"
_NO_REFLINK = {errno.EOPNOTSUPP, errno.EINVAL, errno.EXDEV, errno.ENOTTY, errno.ENOSYS}


def clone_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Make ``dst`` a reflink copy of ``src`` (new file, mode 0400); OSError when it cannot."""
    sfd = os.open(src, os.O_RDONLY)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.ioctl(dfd, FICLONE, sfd)
            os.fchmod(dfd, 0o400)
        except OSError:
            os.close(dfd)
            dfd = -1
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        finally:
            if dfd >= 0:
                os.close(dfd)
    finally:
        os.close(sfd)


def snapshot_dir(image: str) -> Path:
    """Where copies of ``image`` are kept: ``.kluis-snapshots`` beside it (same file system)."""
    d = Path(os.path.realpath(image)).parent / SNAPSHOT_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def reflink_supported(directory: Path) -> str | None:
    """None when files in ``directory`` can be reflinked, else why not (probed for real)."""
    probe = directory / f".probe-{os.getpid()}"
    copy = directory / f".probe-{os.getpid()}.copy"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * 4096)
        clone_file(probe, copy)
    except OSError as exc:
        if exc.errno in _NO_REFLINK:
            return "the file system cannot make reflink copies"
        return f"probing reflink failed: {exc.strerror or exc}"
    finally:
        for p in (probe, copy):
            with contextlib.suppress(OSError):
                os.unlink(p)
    return None


class ReflinkProvider(Provider):
    """Reflink copies of image files."""

    name = "reflink"

    def unusable_reason(self, disks: list[DiskRef]) -> str | None:
        """Needs image files on a file system that can reflink."""
        checked: set[str] = set()
        for disk in disks:
            if disk.format == "block":
                return f"{disk.path} is a block device; reflink copies only image files"
            try:
                directory = snapshot_dir(disk.path)
            except OSError as exc:
                return f"cannot create {SNAPSHOT_DIR} beside {disk.path}: {exc.strerror or exc}"
            if str(directory) in checked:
                continue
            reason = reflink_supported(directory)
            if reason:
                return f"{reason} ({disk.path})"
            checked.add(str(directory))
        return None

    def create(self, disks: list[DiskRef], snapshot_id: str) -> Snapshot:
        """Reflink every image; on a failure the copies made so far are removed."""
        made: list[DiskSnapshot] = []
        try:
            for disk in disks:
                dst = snapshot_dir(disk.path) / f"{Path(disk.path).name}@{snapshot_id}"
                try:
                    clone_file(disk.path, dst)
                except OSError as exc:
                    raise KluisError(
                        "SnapshotProviderFailed",
                        provider=self.name,
                        device=disk.path,
                        reason=f"FICLONE failed: {exc.strerror or exc}",
                    ) from exc
                made.append(
                    DiskSnapshot(disk.name, disk.path, str(dst), os.stat(dst).st_size, {"file": str(dst)})
                )
        except BaseException:
            for d in made:
                with contextlib.suppress(OSError):
                    os.unlink(d.data["file"])
            raise
        return Snapshot(snapshot_id, self.name, time.time(), made)

    def delete(self, snapshot: Snapshot) -> None:
        """Remove the copies."""
        for d in snapshot.disks:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(d.data["file"])

    def changed_extents(
        self, previous: Snapshot, current: Snapshot, disk: str
    ) -> list[tuple[int, int]] | None:
        """Compare the extent maps of the two copies of ``disk``."""
        prev, cur = previous.disk(disk), current.disk(disk)
        if os.path.realpath(prev.source) != os.path.realpath(cur.source):
            return None
        if not (os.path.exists(prev.data["file"]) and os.path.exists(cur.data["file"])):
            return None
        return changed_between(prev.data["file"], cur.data["file"])
