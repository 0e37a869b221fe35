"""A tiny FUSE file system whose files fail in chosen ways, for backup warning tests.

Run as a process: ``python -m tests.support.faultyfs MOUNTPOINT``. It serves:

- ``good.txt``: readable
- ``eio.bin``: listed and opened, but every read fails with EIO (a damaged disk)
- ``offline.bin``: every read fails with ENOTCONN (a network file whose server is gone)
- ``denied.txt``: opening fails with EACCES, even for root
- ``gone.txt``: listed by readdir, but looking it up fails with ENOENT (deleted meanwhile)
- ``badlink``: a symbolic link whose target cannot be read (readlink fails with EIO)
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import trio

GOOD = b"this file reads fine\n" * 100
FILES: dict[str, tuple[int, int]] = {
    # name: (inode, errno on read or open; 0 = fine)
    "good.txt": (10, 0),
    "eio.bin": (11, errno.EIO),
    "offline.bin": (12, errno.ENOTCONN),
    "denied.txt": (13, errno.EACCES),
    "gone.txt": (14, errno.ENOENT),
    "badlink": (15, errno.EIO),
}
SYMLINKS = {15}
BY_INODE = {ino: (name, err) for name, (ino, err) in FILES.items()}


class FaultyFs(pyfuse3.Operations):
    """Read-only file system with one failure per file."""

    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_size = 0
        elif inode in SYMLINKS:
            attr.st_mode = stat.S_IFLNK | 0o777
            attr.st_size = 8
        else:
            attr.st_mode = stat.S_IFREG | 0o644
            attr.st_size = len(GOOD)
        attr.st_uid = os.getuid()
        attr.st_gid = os.getgid()
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = 1_700_000_000 * 10**9
        attr.st_blksize = 4096
        attr.st_blocks = (attr.st_size + 511) // 512
        return attr

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode != pyfuse3.ROOT_INODE and inode not in BY_INODE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        entry = FILES.get(name.decode())
        if parent_inode != pyfuse3.ROOT_INODE or entry is None or entry[1] == errno.ENOENT:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(entry[0])

    async def opendir(self, inode: int, ctx: Any) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        for name, (ino, _err) in sorted(FILES.items(), key=lambda kv: kv[1][0]):
            if ino <= start_id:
                continue
            if not pyfuse3.readdir_reply(token, name.encode(), self._attr(ino), ino):
                break

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        _name, err = BY_INODE[inode]
        if err == errno.EACCES:
            raise pyfuse3.FUSEError(errno.EACCES)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        _name, err = BY_INODE[fh]
        if err:
            raise pyfuse3.FUSEError(err)
        return GOOD[off : off + size]

    async def release(self, fh: int) -> None:
        return None

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        raise pyfuse3.FUSEError(BY_INODE[inode][1])


def main(mountpoint: str) -> None:
    """Mount and serve until unmounted."""
    options = set(pyfuse3.default_options)
    options.add("fsname=kluis-faultyfs")
    options.discard("default_permissions")
    pyfuse3.init(FaultyFs(), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


@contextlib.contextmanager
def mounted(mnt: Path) -> Iterator[Path]:
    """This file system served at ``mnt`` (an empty directory) by a child process."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.faultyfs", str(mnt)], cwd=root)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the test FUSE file system did not mount")
            time.sleep(0.05)
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        proc.wait(timeout=10)


if __name__ == "__main__":
    main(sys.argv[1])
