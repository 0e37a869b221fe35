"""The FUSE view of a disk recovery point: one read-only regular file per disk.

Blocks are fetched on demand through :class:`~kluis.engine.disk_restore.DiskImageReader`.
:mod:`kluis.engine.diskfs` attaches these files to loop devices and mounts what they hold.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time

import pyfuse3
import trio

from kluis.catalog import KluisError
from kluis.engine.disk_restore import DiskImageReader
from kluis.engine.repository import Repository

log = logging.getLogger("kluis.mount")

_ATTR_TIMEOUT = 3600.0


def mount_failed(point: str, mountpoint: str, reason: str) -> KluisError:
    """RecoveryMountFailed for ``point`` at ``mountpoint``, saying why."""
    return KluisError("RecoveryMountFailed", point=point, mountpoint=mountpoint, reason=reason)


class DiskImageFS(pyfuse3.Operations):
    """A directory with one read-only regular file per disk of a disk recovery point."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, repo: Repository, point_id: str, *, threads: int = 4) -> None:
        super().__init__()
        header, manifest = repo.load_point(point_id)
        if manifest.get("type") != "disk":
            raise mount_failed(
                point_id, "-", f"it is a {header.get('kind', '?')} recovery point, not a disk point"
            )
        self.point_id = point_id
        self.header = header
        self.readers: dict[int, DiskImageReader] = {}
        self.names: dict[bytes, int] = {}
        for i, disk in enumerate(manifest.get("disks") or [], start=pyfuse3.ROOT_INODE + 1):
            name = str(disk["name"])
            self.readers[i] = DiskImageReader(repo, point_id, name)
            self.names[name.encode()] = i
        self._limiter = trio.CapacityLimiter(max(1, threads))
        self._mtime_ns = time.time_ns()
        self.last_activity = time.monotonic()
        self.requests = 0

    def _touch(self) -> None:
        self.last_activity = time.monotonic()
        self.requests += 1

    def _attributes(self, ino: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = ino
        attr.entry_timeout = attr.attr_timeout = _ATTR_TIMEOUT
        if ino == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o500
            attr.st_nlink = 2
            size = 0
        elif ino in self.readers:
            attr.st_mode = stat.S_IFREG | 0o400
            attr.st_nlink = 1
            size = self.readers[ino].size
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_size = size
        attr.st_blksize = 128 * 1024
        attr.st_blocks = (size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self._mtime_ns
        return attr

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """A disk by name in the root directory."""
        self._touch()
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in (b".", b".."):
            return self._attributes(pyfuse3.ROOT_INODE)
        ino = self.names.get(bytes(name))
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(ino)

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """Metadata of the root or of a disk image."""
        self._touch()
        return self._attributes(inode)

    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        """Only the root is a directory."""
        self._touch()
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """The disk images, by name."""
        self._touch()
        entries = sorted(self.names.items())
        for position, (name, ino) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, pyfuse3.FileNameT(name), self._attributes(ino), position):
                break

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        """Nothing to release."""

    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Open a disk image for reading; the inode is the handle."""
        self._touch()
        if inode not in self.readers:
            raise pyfuse3.FUSEError(errno.EISDIR if inode == pyfuse3.ROOT_INODE else errno.ENOENT)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode), keep_cache=True)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        """Bytes of a disk image, its blocks loaded in a worker thread."""
        self._touch()
        reader = self.readers.get(fh)
        if reader is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            data: bytes = await trio.to_thread.run_sync(reader.read, off, size, limiter=self._limiter)
        except KluisError as exc:
            log.error("%s: %s", exc.code, exc.message)
            raise pyfuse3.FUSEError(errno.EIO) from None
        self.last_activity = time.monotonic()
        return data

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        """Nothing to release."""

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """The disks' total size; nothing is free."""
        self._touch()
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_blocks = sum(r.size for r in self.readers.values()) // 4096
        data.f_files = len(self.readers) + 1
        data.f_namemax = 255
        return data
