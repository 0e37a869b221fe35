"""Block maps of disk images: which blob holds each fixed-size block of a disk.

A disk of ``size`` bytes is cut into blocks of ``block_size`` bytes (the last one
may be shorter). Block *i*'s entry is the keyed chunk id of its bytes, or
:data:`ZERO_ID` (32 zero bytes, never a real keyed BLAKE3 output) when the block
is all zeros: zero blocks are not stored at all.

The map is cut into segments of ``segment_entries`` consecutive entries; each
segment is one BLOCKMAP blob and the recovery point's manifest lists the
segment ids in order. Segments deduplicate like any blob: a daily backup of a
large disk with few changes stores only the segments that hold a changed block,
not a full map.

Segment plaintext::

    magic b"KLBMAP01" | count (u32 LE) | count x 32-byte ids

The segment does not name its position on the disk, so equal segments anywhere
(a run of empty space, say) are one blob.

Both sizes were chosen by measuring (``benchmarks/disk_blocksize.py``, results in
``benchmarks/RESULTS-disk-blocksize.md``): a 4 GiB ext4 image with 3.5 GB of
/usr files, backed up, then 1% of its 4 KiB pages rewritten at random.

:data:`DEFAULT_BLOCK_SIZE` = 32 KiB: the second backup added 107 MB at 16 KiB,
155 MB at 32 KiB, 252 MB at 64 KiB and 426 MB at 128 KiB; the target is at most
0.2 x restic's +888 MB (178 MB). 32 KiB is the largest size that meets it; 16 KiB
would store less after scattered writes but doubles the map, the index entries and
the per-block work (its first backup took 17 s against 8 s in the recorded run).

:data:`DEFAULT_SEGMENT_ENTRIES` = 1024 (a 32 KiB segment covering 32 MiB of disk):
the map bytes a backup adds are the segments holding a change plus the manifest's
list of segment ids (about 37 bytes each, compressed). After 1% random writes every
segment changes at any N. For a quiet day (200 scattered writes and one 64 MiB run)
on a 1 TiB disk the measured-and-extrapolated cost is lowest at N = 512 (5.6 MB) and
7.8 MB at 1024; 1024 halves the segment list every listing, restore and mount of a
point has to read (1.2 MB instead of 2.3 MB per TiB), for 2.2 MB more per TiB on
such a day, which is noise beside the 70 MB of data that day changed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kluis.catalog import KluisError
from kluis.engine.format import ID_SIZE

ZERO_ID = bytes(ID_SIZE)
BLOCKMAP_MAGIC = b"KLBMAP01"
_HEADER = struct.Struct("<8sI")

DEFAULT_BLOCK_SIZE = 32 * 1024
DEFAULT_SEGMENT_ENTRIES = 1024
MIN_BLOCK_SIZE = 4 * 1024
MAX_BLOCK_SIZE = 4 * 1024 * 1024
# The seeds' limit for a disk in a machine backup.
MAX_DISK_SIZE = 32 * 1024**4


def check_block_size(block_size: int) -> None:
    """Refuse a block size that is not a power of two between 4 KiB and 4 MiB."""
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise KluisError(
            "ValidationFailed",
            reason=f"block size {block_size} must be a power of two between 4 KiB and 4 MiB",
        )


def encode_segment(raw: bytes | bytearray | memoryview) -> bytes:
    """A segment blob's plaintext from the concatenated 32-byte entries ``raw``."""
    if len(raw) % ID_SIZE:
        raise ValueError("a block map segment holds whole 32-byte entries")
    return _HEADER.pack(BLOCKMAP_MAGIC, len(raw) // ID_SIZE) + bytes(raw)


def decode_segment(data: bytes | bytearray | memoryview, *, where: str, expected: int | None = None) -> bytes:
    """The concatenated entries of a segment; DiskBlockMapCorrupt when malformed.

    ``expected`` is the entry count the manifest implies for this segment.
    """
    if len(data) < _HEADER.size:
        raise KluisError("DiskBlockMapCorrupt", where=where, reason="shorter than its header")
    magic, count = _HEADER.unpack_from(data)
    if magic != BLOCKMAP_MAGIC:
        raise KluisError("DiskBlockMapCorrupt", where=where, reason="not a block map segment")
    if len(data) - _HEADER.size != count * ID_SIZE:
        raise KluisError("DiskBlockMapCorrupt", where=where, reason="length does not match its count")
    if expected is not None and count != expected:
        raise KluisError(
            "DiskBlockMapCorrupt", where=where, reason=f"holds {count} entries where {expected} belong"
        )
    return bytes(memoryview(data)[_HEADER.size :])


def encode_entries(ids: Iterable[bytes | None]) -> bytes:
    """A segment from a list of ids, None meaning an all-zero block."""
    raw = bytearray()
    for i in ids:
        if i is None:
            raw += ZERO_ID
        elif len(i) != ID_SIZE or i == ZERO_ID:
            raise ValueError("a block id is 32 bytes and never all zeros")
        else:
            raw += i
    return encode_segment(raw)


def decode_entries(data: bytes | bytearray | memoryview, *, where: str = "a block map") -> list[bytes | None]:
    """Inverse of :func:`encode_entries`."""
    raw = decode_segment(data, where=where)
    return [None if e == ZERO_ID else e for e in iter_ids(raw)]


def iter_ids(raw: bytes | bytearray | memoryview) -> Iterator[bytes]:
    """The 32-byte entries of concatenated ``raw`` (zero markers included)."""
    view = memoryview(raw)
    for i in range(0, len(view), ID_SIZE):
        yield bytes(view[i : i + ID_SIZE])


def stored_ids(raw: bytes | bytearray | memoryview) -> set[bytes]:
    """The distinct blob ids of ``raw``, without the zero marker."""
    ids = set(iter_ids(raw))
    ids.discard(ZERO_ID)
    return ids


@dataclass
class DiskMap:
    """One disk of a disk recovery point, as its manifest records it."""

    name: str
    size: int
    block_size: int
    segment_entries: int
    segments: list[bytes]
    source: str = ""
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def blocks(self) -> int:
        """Number of blocks, the last one possibly short."""
        return -(-self.size // self.block_size)

    def segment_count(self, index: int) -> int:
        """Entries in segment ``index`` (the last one may hold fewer)."""
        return min(self.segment_entries, self.blocks - index * self.segment_entries)

    def block_length(self, block: int) -> int:
        """Bytes in block ``block``."""
        return min(self.block_size, self.size - block * self.block_size)

    def to_manifest(self) -> dict[str, Any]:
        """The JSON form kept in the (encrypted) manifest."""
        return {
            "name": self.name,
            "source": self.source,
            "size": self.size,
            "block_size": self.block_size,
            "segment_entries": self.segment_entries,
            "segments": [s.hex() for s in self.segments],
            "stats": dict(self.stats),
        }

    @classmethod
    def from_manifest(cls, point_id: str, entry: Any) -> DiskMap:
        """Parse and check one ``manifest["disks"]`` entry; RecoveryPointCorrupt when malformed."""
        try:
            disk = cls(
                name=str(entry["name"]),
                size=int(entry["size"]),
                block_size=int(entry["block_size"]),
                segment_entries=int(entry["segment_entries"]),
                segments=[bytes.fromhex(s) for s in entry["segments"]],
                source=str(entry.get("source", "")),
                stats={str(k): int(v) for k, v in dict(entry.get("stats", {})).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KluisError(
                "RecoveryPointCorrupt", point=point_id, reason=f"disk entry malformed: {exc!r}"
            ) from None
        ok = (
            disk.size >= 0
            and disk.block_size > 0
            and disk.segment_entries > 0
            and all(len(s) == ID_SIZE for s in disk.segments)
            and len(disk.segments) == -(-disk.blocks // disk.segment_entries)
        )
        if not ok:
            raise KluisError(
                "RecoveryPointCorrupt",
                point=point_id,
                reason=f"disk {disk.name}: sizes and segment list do not agree",
            )
        return disk


def disks_of(point_id: str, manifest: dict[str, Any]) -> list[DiskMap]:
    """Every disk of a recovery point's manifest (empty for a files point)."""
    raw = manifest.get("disks") or []
    if not isinstance(raw, list):
        raise KluisError("RecoveryPointCorrupt", point=point_id, reason="disk list malformed")
    return [DiskMap.from_manifest(point_id, d) for d in raw]


def find_disk(point_id: str, manifest: dict[str, Any], name: str) -> DiskMap:
    """The disk called ``name``; DiskNotInPoint when the point has no such disk."""
    disks = disks_of(point_id, manifest)
    for d in disks:
        if d.name == name:
            return d
    raise KluisError(
        "DiskNotInPoint",
        disk=name,
        point=point_id,
        available=", ".join(d.name for d in disks) or "none",
    )
