"""Changed byte ranges between two reflinked copies of a file, from their extent maps.

On XFS and btrfs a reflink copy or a subvolume snapshot shares the source's data
extents. When the live file is written afterwards, the written blocks get new
physical extents (copy on write), while the copy keeps the old ones. So, between the
previous snapshot copy and the new one, a logical range is unchanged exactly when
both map it to the same physical bytes (or both have a hole there), and everything
else may have changed. FIEMAP (``FS_IOC_FIEMAP``) reads both maps without reading
any data, which makes an incremental backup of a large image cost only its changes.

Ranges the kernel cannot describe precisely (delayed allocation, inline or tail
data, unknown location) are always reported as changed: the answer may be too
large, never too small.
"""

from __future__ import annotations

import bisect
import fcntl
import itertools
import os
import struct
from dataclasses import dataclass

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_ENCODED = 0x8
FIEMAP_EXTENT_NOT_ALIGNED = 0x100
FIEMAP_EXTENT_DATA_INLINE = 0x200
FIEMAP_EXTENT_DATA_TAIL = 0x400
FIEMAP_EXTENT_UNWRITTEN = 0x800
FIEMAP_EXTENT_SHARED = 0x2000
# Flags that make the physical location meaningless for comparison.
_IMPRECISE = (
    FIEMAP_EXTENT_UNKNOWN
    | FIEMAP_EXTENT_DELALLOC
    | FIEMAP_EXTENT_NOT_ALIGNED
    | FIEMAP_EXTENT_DATA_INLINE
    | FIEMAP_EXTENT_DATA_TAIL
)
_HEADER = struct.Struct("=QQIIII")  # struct fiemap
_EXTENT = struct.Struct("=QQQQQIIII")  # struct fiemap_extent
_BATCH = 512


@dataclass(frozen=True)
class Extent:
    """One mapped range of a file: logical and physical byte offsets, length, FIEMAP flags."""

    logical: int
    physical: int
    length: int
    flags: int

    @property
    def end(self) -> int:
        """First logical byte after the extent."""
        return self.logical + self.length


def extents(path: str | os.PathLike[str], *, sync: bool = True) -> list[Extent]:
    """The file's extent map, sorted by logical offset (``sync`` flushes dirty data first)."""
    out: list[Extent] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        start = 0
        size = os.fstat(fd).st_size
        while start < size:
            buf = bytearray(_HEADER.size + _BATCH * _EXTENT.size)
            _HEADER.pack_into(
                buf, 0, start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC if sync else 0, 0, _BATCH, 0
            )
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
            mapped = _HEADER.unpack_from(buf, 0)[3]
            if mapped == 0:
                break
            last = False
            for i in range(mapped):
                logical, physical, length, _, _, flags, _, _, _ = _EXTENT.unpack_from(
                    buf, _HEADER.size + i * _EXTENT.size
                )
                out.append(Extent(logical, physical, length, flags))
                last = bool(flags & FIEMAP_EXTENT_LAST)
            if last:
                break
            start = out[-1].end
    finally:
        os.close(fd)
    return out


def _at(exts: list[Extent], starts: list[int], pos: int) -> Extent | None:
    i = bisect.bisect_right(starts, pos) - 1
    if i >= 0 and exts[i].logical <= pos < exts[i].end:
        return exts[i]
    return None


def _same(a: Extent | None, b: Extent | None, pos: int) -> bool:
    if a is None or b is None:
        return a is None and b is None  # a hole in both is unchanged
    if (a.flags | b.flags) & _IMPRECISE:
        return False
    if (a.flags | b.flags) & FIEMAP_EXTENT_ENCODED:
        # A compressed extent's physical offset does not move with the logical one.
        return (a.logical, a.physical, a.length) == (b.logical, b.physical, b.length)
    if (a.flags ^ b.flags) & FIEMAP_EXTENT_UNWRITTEN:
        return False
    return a.physical + (pos - a.logical) == b.physical + (pos - b.logical)


def changed_ranges(
    previous: list[Extent], current: list[Extent], previous_size: int, current_size: int
) -> list[tuple[int, int]]:
    """Byte ranges ``(offset, length)`` of ``current`` that may differ from ``previous``."""
    size = max(previous_size, current_size)
    cuts = {0, size, min(previous_size, current_size)}
    for e in (*previous, *current):
        cuts.add(min(e.logical, size))
        cuts.add(min(e.end, size))
    points = sorted(cuts)
    pstarts = [e.logical for e in previous]
    cstarts = [e.logical for e in current]
    changed: list[tuple[int, int]] = []
    small = min(previous_size, current_size)
    for lo, hi in itertools.pairwise(points):
        if lo >= hi:
            continue
        differs = lo >= small or not _same(_at(previous, pstarts, lo), _at(current, cstarts, lo), lo)
        if not differs:
            continue
        if changed and changed[-1][0] + changed[-1][1] == lo:
            changed[-1] = (changed[-1][0], hi - changed[-1][0])
        else:
            changed.append((lo, hi - lo))
    return changed


def changed_between(
    previous: str | os.PathLike[str], current: str | os.PathLike[str]
) -> list[tuple[int, int]]:
    """Changed byte ranges of the file ``current`` against its earlier reflinked copy ``previous``."""
    return changed_ranges(
        extents(previous), extents(current), os.stat(previous).st_size, os.stat(current).st_size
    )
