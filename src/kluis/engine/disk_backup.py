"""Backing up disks (block devices or image files) in fixed-size blocks.

Each disk is cut into blocks of ``block_size`` bytes; a block's id is the keyed
chunk id of its bytes, so an unchanged block of the next backup is found in the
index and not stored again. All-zero blocks are not stored (the map holds a zero
marker), and holes of sparse image files are not even read.

With ``changed_extents`` (from a snapshot provider that knows what was written
since the previous backup) and a previous recovery point of the same disk, only
blocks touching those extents are read; every other entry is copied from the
previous block map, and a segment without any change is the previous segment blob.

Work is cut by map segment: worker threads (2 by default; BLAKE3, zstd and
AES-GCM release the GIL) read a segment's blocks into a reused thread-local
buffer, hash, compress and encrypt them into the thread's pack writer, and
store the segment. The main thread keeps a bounded number of segments in
flight and collects them in order, so memory does not grow with the disk.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kluis.catalog import KluisError
from kluis.engine.blockmap import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_SEGMENT_ENTRIES,
    MAX_DISK_SIZE,
    ZERO_ID,
    DiskMap,
    check_block_size,
    decode_segment,
    disks_of,
    encode_segment,
    stored_ids,
)
from kluis.engine.disk_io import (
    OpenDisk,
    RangeSet,
    data_extents,
    extents_to_blocks,
    merge_block_ranges,
    open_source,
    read_exact,
    subtract_ranges,
)
from kluis.engine.format import ID_SIZE, BlobType
from kluis.engine.progress import Progress, ProgressCallback, Throttle
from kluis.engine.repository import Repository
from kluis.engine.tuning import tune_allocator

# Bytes read per system call: large enough that a read is cheap per byte, small
# enough that two threads' buffers stay in the CPU caches' neighbourhood.
READ_BYTES = 4 * 1024 * 1024

Extents = Iterable[tuple[int, int]]


@dataclass
class DiskSource:
    """One disk to back up: its name in the point, its path, and optionally what changed."""

    name: str
    path: str
    changed_extents: Extents | None = None


@dataclass
class DiskStats:
    """What the backup of one disk did."""

    name: str
    size: int = 0
    blocks: int = 0
    blocks_read: int = 0
    blocks_copied: int = 0
    blocks_zero: int = 0
    blocks_stored: int = 0
    bytes_read: int = 0
    bytes_new: int = 0
    stored_bytes: int = 0
    segments: int = 0
    segments_stored: int = 0
    map_bytes: int = 0
    map_stored_bytes: int = 0

    def add(self, other: _SegmentOutcome) -> None:
        """Add a segment's counts."""
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


_COUNTERS = (
    "blocks_read",
    "blocks_copied",
    "blocks_zero",
    "blocks_stored",
    "bytes_read",
    "bytes_new",
    "stored_bytes",
    "map_bytes",
    "map_stored_bytes",
)


@dataclass
class DiskBackupResult:
    """What a finished disk backup reports."""

    point_id: str
    status: str
    disks: list[DiskStats]
    size: int
    blocks_read: int
    blocks_copied: int
    blocks_zero: int
    blocks_stored: int
    bytes_read: int
    bytes_new: int
    stored_bytes: int
    map_stored_bytes: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """For job reports and ``--json``."""
        out = dict(self.__dict__)
        out["disks"] = [dict(d.__dict__) for d in self.disks]
        return out


@dataclass
class _SegmentOutcome:
    segment_id: bytes
    raw: bytes
    blocks_read: int = 0
    blocks_copied: int = 0
    blocks_zero: int = 0
    blocks_stored: int = 0
    bytes_read: int = 0
    bytes_new: int = 0
    stored_bytes: int = 0
    map_bytes: int = 0
    map_stored_bytes: int = 0
    segment_stored: bool = False


@dataclass
class _DiskJob:
    source: DiskSource
    disk: OpenDisk
    map: DiskMap
    zero_id: bytes
    tail_zero_id: bytes | None
    prev: DiskMap | None = None
    changed: RangeSet | None = None
    copy_limit: int = 0
    stats: DiskStats = field(default_factory=lambda: DiskStats(""))


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\x00" in name or len(name) > 255:
        raise KluisError("ValidationFailed", reason=f"disk name {name!r} must be a plain file name")


def _sources(
    source: str | os.PathLike[str] | Sequence[DiskSource | tuple[str, str | os.PathLike[str]]],
    name: str | None,
    changed_extents: Extents | None,
) -> list[DiskSource]:
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        return [DiskSource(name or os.path.basename(path.rstrip("/")) or "disk", path, changed_extents)]
    if name is not None or changed_extents is not None:
        raise KluisError(
            "ValidationFailed",
            reason="with several disks, give each DiskSource its own name and changed extents",
        )
    out: list[DiskSource] = []
    for item in source:
        if isinstance(item, DiskSource):
            out.append(item)
        else:
            out.append(DiskSource(item[0], os.fspath(item[1])))
    return out


class DiskBackup:
    """One backup of one or more disks into one recovery point.

    ``source`` is a path (block device or image file), or a list of
    :class:`DiskSource` / ``(name, path)`` for a machine with several disks.
    ``previous_point`` is the last recovery point of the same disks; with
    ``changed_extents`` (byte ``(offset, length)`` pairs, single disk) only the
    blocks they touch are read.
    """

    def __init__(
        self,
        repo: Repository,
        source: str | os.PathLike[str] | Sequence[DiskSource | tuple[str, str | os.PathLike[str]]],
        *,
        name: str | None = None,
        previous_point: str | None = None,
        block_size: int | None = None,
        segment_entries: int | None = None,
        changed_extents: Extents | None = None,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        threads: int = 2,
        item: str | None = None,
        hostname: str | None = None,
        consistency: str = "crash",
    ) -> None:
        self.repo = repo
        self.sources = _sources(source, name, changed_extents)
        names = [s.name for s in self.sources]
        for n in names:
            _check_name(n)
        if len(set(names)) != len(names) or not names:
            raise KluisError("ValidationFailed", reason="a disk point needs one or more distinct disk names")
        self.block_size = block_size or DEFAULT_BLOCK_SIZE
        check_block_size(self.block_size)
        self.segment_entries = segment_entries or DEFAULT_SEGMENT_ENTRIES
        if not 1 <= self.segment_entries <= 1 << 20:
            raise KluisError("ValidationFailed", reason="segment entries must be between 1 and 1048576")
        self.previous_point = previous_point
        self.threads = max(1, threads)
        self.item = item
        self.hostname = hostname or socket.gethostname()
        self.consistency = consistency
        self.progress = Progress(phase="Transfer data to vault")
        self._report = Throttle(progress)
        self._should_stop = should_stop or (lambda: False)
        self._local = threading.local()
        self._read_bytes = max(self.block_size, READ_BYTES - READ_BYTES % self.block_size)

    # -- the run ------------------------------------------------------------------------

    def run(self) -> DiskBackupResult:
        """Back up every disk and commit one recovery point."""
        tune_allocator()
        started = time.monotonic()
        previous = self._previous_disks()
        jobs: list[_DiskJob] = []
        refs: set[bytes] = set()
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="kluis-disk")
        try:
            for src in self.sources:
                jobs.append(self._open(src, previous.get(src.name)))
            self.progress.total_bytes = sum(j.disk.size for j in jobs)
            for job in jobs:
                self._backup_disk(job, pool, refs)
            pool.shutdown(wait=True)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            self.repo.index.forget_pending()
            raise
        finally:
            for job in jobs:
                job.disk.close()
        point_id = self._commit(jobs, refs)
        self._report(self.progress, force=True)
        stats = [j.stats for j in jobs]
        return DiskBackupResult(
            point_id=point_id,
            status="completed",
            disks=stats,
            size=sum(s.size for s in stats),
            blocks_read=sum(s.blocks_read for s in stats),
            blocks_copied=sum(s.blocks_copied for s in stats),
            blocks_zero=sum(s.blocks_zero for s in stats),
            blocks_stored=sum(s.blocks_stored for s in stats),
            bytes_read=sum(s.bytes_read for s in stats),
            bytes_new=sum(s.bytes_new for s in stats),
            stored_bytes=sum(s.stored_bytes + s.map_stored_bytes for s in stats),
            map_stored_bytes=sum(s.map_stored_bytes for s in stats),
            seconds=round(time.monotonic() - started, 3),
        )

    def _previous_disks(self) -> dict[str, DiskMap]:
        if self.previous_point is None:
            return {}
        _header, manifest = self.repo.load_point(self.previous_point)
        return {d.name: d for d in disks_of(self.previous_point, manifest)}

    def _open(self, src: DiskSource, prev: DiskMap | None) -> _DiskJob:
        disk = open_source(src.path)
        try:
            if disk.size > MAX_DISK_SIZE:
                raise KluisError(
                    "UserErrorUnsupportedDiskSize",
                    disk=src.name,
                    size=f"{disk.size / 1024**4:.1f} TiB",
                    limit="32 TiB",
                )
            bs = self.block_size
            dmap = DiskMap(src.name, disk.size, bs, self.segment_entries, [], source=src.path)
            codec = self.repo.codec()
            tail = disk.size % bs
            job = _DiskJob(
                source=src,
                disk=disk,
                map=dmap,
                zero_id=codec.chunk_id(bytes(bs)),
                tail_zero_id=codec.chunk_id(bytes(tail)) if tail else None,
                stats=DiskStats(src.name, size=disk.size, blocks=dmap.blocks),
            )
            usable = (
                prev is not None
                and prev.block_size == bs
                and prev.segment_entries == self.segment_entries
                and src.changed_extents is not None
            )
            if usable and prev is not None and src.changed_extents is not None:
                job.prev = prev
                job.changed = RangeSet(extents_to_blocks(src.changed_extents, bs, dmap.blocks))
                # Only blocks that were whole and the same length last time can be copied.
                job.copy_limit = min(dmap.blocks, prev.blocks if prev.size == disk.size else prev.size // bs)
            return job
        except BaseException:
            disk.close()
            raise

    def _backup_disk(self, job: _DiskJob, pool: ThreadPoolExecutor, refs: set[bytes]) -> None:
        dmap = job.map
        count = -(-dmap.blocks // dmap.segment_entries)
        in_flight: deque[Future[_SegmentOutcome]] = deque()
        limit = 2 * self.threads + 2

        def collect() -> None:
            outcome = in_flight.popleft().result()
            dmap.segments.append(outcome.segment_id)
            refs.update(stored_ids(outcome.raw))
            refs.add(outcome.segment_id)
            job.stats.add(outcome)
            job.stats.segments += 1
            job.stats.segments_stored += outcome.segment_stored
            seg_start = (len(dmap.segments) - 1) * dmap.segment_entries * dmap.block_size
            self.progress.bytes += min(dmap.size - seg_start, len(outcome.raw) // ID_SIZE * dmap.block_size)
            self.progress.new_bytes += outcome.bytes_new
            self._report(self.progress)

        for seg in range(count):
            if self._should_stop():
                raise KluisError("OperationCancelled", operation="disk backup")
            in_flight.append(pool.submit(self._segment, job, seg))
            while len(in_flight) >= limit:
                collect()
        while in_flight:
            collect()
        dmap.stats = {name: getattr(job.stats, name) for name in ("blocks_read", "blocks_zero", "bytes_new")}

    def _commit(self, jobs: list[_DiskJob], refs: set[bytes]) -> str:
        manifest: dict[str, Any] = {
            "type": "disk",
            "disks": [j.map.to_manifest() for j in jobs],
            "hostname": self.hostname,
            "item": self.item,
            "previous": self.previous_point,
            "consistency": self.consistency,
            "status": "completed",
            "stats": {
                "size": sum(j.disk.size for j in jobs),
                "bytes_read": sum(j.stats.bytes_read for j in jobs),
                "new_bytes": sum(j.stats.bytes_new for j in jobs),
            },
        }
        header = {
            "status": "completed",
            "size": manifest["stats"]["size"],
            "item": self.item,
            "disks": len(jobs),
            "consistency": self.consistency,
        }
        return self.repo.save_point("disk", manifest, refs, header)

    # -- worker side ------------------------------------------------------------------

    def _buffer(self) -> memoryview:
        view: memoryview | None = getattr(self._local, "view", None)
        if view is None:
            view = memoryview(bytearray(self._read_bytes))
            self._local.view = view
        return view

    def _segment(self, job: _DiskJob, seg: int) -> _SegmentOutcome:
        """Produce one map segment: plan, copy, read, store."""
        dmap = job.map
        first = seg * dmap.segment_entries
        end = first + dmap.segment_count(seg)
        raw = bytearray((end - first) * ID_SIZE)
        out = _SegmentOutcome(b"", b"")
        read: list[tuple[int, int]] = [(first, end)]
        if job.prev is not None and job.changed is not None and first < job.copy_limit:
            copy_end = min(end, job.copy_limit)
            copy = subtract_ranges(first, copy_end, job.changed.clip(first, copy_end))
            if copy:
                extra = self._copy_previous(job, seg, first, copy, raw, out)
                if extra is not None:
                    read = merge_block_ranges([*subtract_ranges(first, end, copy), *extra])
        if job.disk.sparse:
            read = self._without_holes(job, read, out)
        for start, stop in read:
            self._read_blocks(job, first, start, stop, raw, out)
        encoded = encode_segment(raw)
        codec = self.repo.codec()
        out.segment_id = codec.chunk_id(encoded)
        out.raw = bytes(raw)
        out.map_bytes = len(encoded)
        if self.repo.index.reserve(out.segment_id):
            out.map_stored_bytes = self.repo.writer().add(out.segment_id, BlobType.BLOCKMAP, encoded)
            out.segment_stored = True
        return out

    def _copy_previous(
        self,
        job: _DiskJob,
        seg: int,
        first: int,
        copy: list[tuple[int, int]],
        raw: bytearray,
        out: _SegmentOutcome,
    ) -> list[tuple[int, int]] | None:
        """Copy unchanged entries from the previous map; returns blocks that must be read instead.

        None means the previous segment is unusable, so everything is read.
        """
        prev = job.prev
        assert prev is not None
        where = f"segment {seg} of disk {prev.name} in recovery point {self.previous_point}"
        try:
            data = self.repo.load_blob(prev.segments[seg], where=where)
            prev_raw = decode_segment(data, where=where, expected=prev.segment_count(seg))
        except KluisError:
            return None  # damaged or missing: reading the disk again is always correct
        index = self.repo.index
        extra: list[tuple[int, int]] = []
        for start, stop in copy:
            for b in range(start, stop):
                off = (b - first) * ID_SIZE
                bid = prev_raw[off : off + ID_SIZE]
                if bid == ZERO_ID:
                    out.blocks_zero += 1
                elif bid in index:
                    raw[off : off + ID_SIZE] = bid
                    out.blocks_copied += 1
                else:
                    extra.append((b, b + 1))
        return extra

    def _without_holes(
        self, job: _DiskJob, read: list[tuple[int, int]], out: _SegmentOutcome
    ) -> list[tuple[int, int]]:
        """Drop blocks that lie wholly in holes of a sparse image; they stay zero entries."""
        bs = job.map.block_size
        kept: list[tuple[int, int]] = []
        for start, stop in read:
            extents = data_extents(job.disk.fd, start * bs, min(stop * bs, job.disk.size))
            blocks = merge_block_ranges((s // bs, -(-e // bs)) for s, e in extents)
            kept.extend(blocks)
            out.blocks_zero += (stop - start) - sum(e - s for s, e in blocks)
        return kept

    def _read_blocks(
        self, job: _DiskJob, first: int, start: int, stop: int, raw: bytearray, out: _SegmentOutcome
    ) -> None:
        """Read blocks [start, stop), store the new ones, fill their entries."""
        bs = job.map.block_size
        size = job.disk.size
        buf = self._buffer()
        per_read = len(buf) // bs
        codec = self.repo.codec()
        index = self.repo.index
        b = start
        while b < stop:
            if self._should_stop():
                raise KluisError("OperationCancelled", operation="disk backup")
            n = min(per_read, stop - b)
            offset = b * bs
            length = min(n * bs, size - offset)
            view = buf[:length]
            read_exact(job.disk.fd, view, offset, job.disk.path)
            out.blocks_read += n
            out.bytes_read += length
            writer = None
            for j in range(n):
                block = view[j * bs : (j + 1) * bs]
                bid = codec.chunk_id(block)
                if bid == job.zero_id or (len(block) < bs and bid == job.tail_zero_id):
                    out.blocks_zero += 1
                    continue
                if index.reserve(bid):
                    writer = writer or self.repo.writer()
                    out.stored_bytes += writer.add(bid, BlobType.DATA, block)
                    out.blocks_stored += 1
                    out.bytes_new += len(block)
                pos = (b + j - first) * ID_SIZE
                raw[pos : pos + ID_SIZE] = bid
            b += n
