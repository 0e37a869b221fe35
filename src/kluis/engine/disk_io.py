"""Opening disks for backup and restore: sizes, holes, zeroing, with catalog errors.

A disk is a block device or an image file. Sizes come from the BLKGETSIZE64
ioctl for devices and from ``fstat`` for files. Image files may be sparse: their
holes are found with SEEK_DATA/SEEK_HOLE so they are never read.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kluis.catalog import KluisError

# <linux/fs.h>: _IOR(0x12, 114, size_t) and _IO(0x12, 127).
BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
_U64 = struct.Struct("=Q")
_RANGE = struct.Struct("=QQ")


@dataclass
class OpenDisk:
    """An open disk: its descriptor, size and whether it is a block device."""

    path: str
    fd: int
    size: int
    is_device: bool
    sparse: bool

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def device_size(fd: int) -> int:
    """Size of an open block device in bytes."""
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, bytes(_U64.size))
        return int(_U64.unpack(buf)[0])
    except OSError:
        # Not every driver answers the ioctl; the end of the device is as good.
        return os.lseek(fd, 0, os.SEEK_END)


def open_source(path: str) -> OpenDisk:
    """Open a disk to read; DiskSourceUnreadable when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KluisError("DiskSourceUnreadable", path=path, reason=exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            size, is_device, sparse = device_size(fd), True, False
        elif stat.S_ISREG(st.st_mode):
            size, is_device = st.st_size, False
            sparse = st.st_blocks * 512 < st.st_size
        else:
            raise KluisError(
                "DiskSourceUnreadable", path=path, reason="it is neither a block device nor an image file"
            )
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass  # advice only
    except OSError as exc:
        os.close(fd)
        raise KluisError("DiskSourceUnreadable", path=path, reason=exc.strerror or str(exc)) from None
    except BaseException:
        os.close(fd)
        raise
    return OpenDisk(path, fd, size, is_device, sparse)


def data_extents(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """Byte ranges in [start, end) that hold data (not holes) in a sparse file."""
    out: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break  # only a hole up to the end of the file
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(start, end)]  # the file system cannot tell: treat it all as data
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        out.append((data, hole))
        pos = hole
    return out


def read_exact(fd: int, view: memoryview, offset: int, path: str) -> None:
    """Fill ``view`` from ``offset``; DiskSourceUnreadable on I/O errors or an early end."""
    done = 0
    while done < len(view):
        try:
            n = os.preadv(fd, [view[done:]], offset + done)
        except OSError as exc:
            raise KluisError(
                "DiskSourceUnreadable", path=path, reason=f"at byte {offset + done}: {exc.strerror or exc}"
            ) from None
        if n == 0:
            raise KluisError(
                "DiskSourceUnreadable",
                path=path,
                reason=f"it ended at byte {offset + done}, shorter than when the backup started",
            )
        done += n


def write_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """pwrite until everything is written."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


class ZeroWriter:
    """Makes byte ranges of a block device read as zeros: BLKZEROOUT, else written zeros."""

    def __init__(self, fd: int, buffer_size: int = 1024 * 1024) -> None:
        self.fd = fd
        self.use_ioctl = True
        self._zeros = bytes(buffer_size)

    def zero(self, offset: int, length: int) -> None:
        """Zero [offset, offset + length)."""
        if length <= 0:
            return
        if self.use_ioctl and offset % 512 == 0 and length % 512 == 0:
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, _RANGE.pack(offset, length))
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
                    raise
                self.use_ioctl = False
        end = offset + length
        while offset < end:
            n = min(len(self._zeros), end - offset)
            write_all(self.fd, memoryview(self._zeros)[:n], offset)
            offset += n


class RangeSet:
    """Sorted, merged half-open ranges of integers, with clipping by bisection."""

    def __init__(self, ranges: Sequence[tuple[int, int]]) -> None:
        self.ranges = list(ranges)
        self._ends = [e for _s, e in self.ranges]

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def clip(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of the set inside [start, end)."""
        out: list[tuple[int, int]] = []
        i = bisect_right(self._ends, start)
        while i < len(self.ranges):
            s, e = self.ranges[i]
            if s >= end:
                break
            out.append((max(s, start), min(e, end)))
            i += 1
        return out

    def total(self) -> int:
        """How many integers the set holds."""
        return sum(e - s for s, e in self.ranges)


def merge_block_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged, non-empty half-open ranges."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def extents_to_blocks(
    extents: Iterable[tuple[int, int]], block_size: int, blocks: int
) -> list[tuple[int, int]]:
    """Byte extents (offset, length) as merged ranges of the block indices they touch."""
    ranges: list[tuple[int, int]] = []
    for offset, length in extents:
        if length <= 0:
            continue
        if offset < 0:
            raise KluisError("ValidationFailed", reason=f"changed extent at negative offset {offset}")
        first = offset // block_size
        last = -(-(offset + length) // block_size)
        ranges.append((min(first, blocks), min(last, blocks)))
    return merge_block_ranges(ranges)


def subtract_ranges(start: int, end: int, holes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) without the sorted, merged ``holes`` (already clipped to it)."""
    out: list[tuple[int, int]] = []
    pos = start
    for s, e in holes:
        if s > pos:
            out.append((pos, s))
        pos = max(pos, e)
    if pos < end:
        out.append((pos, end))
    return out
