"""Restoring a disk of a recovery point, and reading one at random offsets.

:class:`DiskRestore` writes a whole disk to an image file or a block device.
An image file is written sparse: zero blocks are skipped and the final size is
set with ``ftruncate``; it is written under a temporary name and renamed into
place only when complete. A block device gets zeros where the map says zero
(BLKZEROOUT where the device supports it, written zeros otherwise), and must be
at least as large as the disk.

:class:`DiskImageReader` serves ``read(offset, length)`` from the map and the
blobs on demand with small LRU caches; the FUSE mount of a disk point uses it.

Every block is checked against its id when decoded, so damaged data fails the
restore with a catalog error instead of writing wrong bytes.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kluis.catalog import KluisError
from kluis.engine.blockmap import ZERO_ID, DiskMap, decode_segment, find_disk
from kluis.engine.disk_io import ZeroWriter, device_size, write_all
from kluis.engine.format import ID_SIZE
from kluis.engine.progress import Progress, ProgressCallback, Throttle
from kluis.engine.repository import Repository
from kluis.engine.tuning import tune_allocator

# Consecutive blocks are gathered into one buffer of this size and written with one call.
WRITE_BYTES = 4 * 1024 * 1024


@dataclass
class DiskRestoreResult:
    """What a finished disk restore reports."""

    point_id: str
    disk: str
    target: str
    size: int
    blocks_written: int
    blocks_zero: int
    bytes_written: int
    device: bool
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """For job reports and ``--json``."""
        return dict(self.__dict__)


def load_segment(repo: Repository, point_id: str, disk: DiskMap, seg: int) -> bytes:
    """The concatenated entries of one map segment of ``disk``."""
    where = f"segment {seg} of disk {disk.name} in recovery point {point_id}"
    data = repo.load_blob(disk.segments[seg], where=where)
    return decode_segment(data, where=where, expected=disk.segment_count(seg))


def load_block(
    repo: Repository, point_id: str, disk: DiskMap, block: int, block_id: bytes, *, view: bool = False
) -> bytes | memoryview:
    """The bytes of one non-zero block, checked against its id and expected length.

    With ``view`` the result may be a view of this thread's decode buffer, valid only
    until its next load: for callers that copy it out at once.
    """
    where = f"block {block} of disk {disk.name} in recovery point {point_id}"
    data = repo.load_blob_view(block_id, where=where) if view else repo.load_blob(block_id, where=where)
    if len(data) != disk.block_length(block):
        raise KluisError(
            "DiskBlockMapCorrupt",
            where=f"disk {disk.name} of recovery point {point_id}",
            reason=f"block {block} holds {len(data)} bytes where {disk.block_length(block)} belong",
        )
    return data


class DiskRestore:
    """One restore of one disk of a recovery point to an image file or a block device."""

    def __init__(
        self,
        repo: Repository,
        point_id: str,
        disk_name: str,
        target: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        threads: int = 2,
    ) -> None:
        self.repo = repo
        self.point_id = point_id
        self.disk_name = disk_name
        self.target = os.path.abspath(os.fspath(target))
        self.threads = max(1, threads)
        self.progress = Progress(phase="Restore disk")
        self._report = Throttle(progress)
        self._should_stop = should_stop or (lambda: False)
        self._local = threading.local()
        self._zero: ZeroWriter | None = None
        self._written = 0
        self._zero_blocks = 0
        self._lock = threading.Lock()

    def run(self) -> DiskRestoreResult:
        """Write the disk to the target; on failure raise a catalog error and leave no partial image."""
        tune_allocator()
        started = time.monotonic()
        _header, manifest = self.repo.load_point(self.point_id)
        disk = find_disk(self.point_id, manifest, self.disk_name)
        self.progress.total_bytes = disk.size
        is_device = self._target_is_device()
        partial: str | None = None
        if is_device:
            fd = self._open_device(disk)
            self._zero = ZeroWriter(fd)
        else:
            fd, partial = self._open_image()
        try:
            self._write_disk(fd, disk)
            if not is_device:
                os.ftruncate(fd, disk.size)
            os.fsync(fd)
        except OSError as exc:
            self._discard(fd, partial)
            raise KluisError(
                "RestoreTargetInvalid", target=self.target, reason=exc.strerror or str(exc)
            ) from None
        except BaseException:
            self._discard(fd, partial)
            raise
        os.close(fd)
        if partial is not None:
            os.replace(partial, self.target)
            _fsync_dir(os.path.dirname(self.target))
        self._report(self.progress, force=True)
        return DiskRestoreResult(
            point_id=self.point_id,
            disk=disk.name,
            target=self.target,
            size=disk.size,
            blocks_written=disk.blocks - self._zero_blocks,
            blocks_zero=self._zero_blocks,
            bytes_written=self._written,
            device=is_device,
            seconds=round(time.monotonic() - started, 3),
        )

    @staticmethod
    def _discard(fd: int, partial: str | None) -> None:
        os.close(fd)
        if partial is not None:
            try:
                os.unlink(partial)
            except OSError:
                pass

    # -- targets --------------------------------------------------------------------------

    def _target_is_device(self) -> bool:
        try:
            st = os.stat(self.target)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise KluisError("RestoreTargetInvalid", target=self.target, reason=exc.strerror) from None
        if stat.S_ISBLK(st.st_mode):
            return True
        if not stat.S_ISREG(st.st_mode):
            raise KluisError(
                "RestoreTargetInvalid",
                target=self.target,
                reason="it is neither an image file nor a block device",
            )
        return False

    def _open_device(self, disk: DiskMap) -> int:
        try:
            # O_EXCL on a block device fails with EBUSY while it is mounted or otherwise claimed.
            fd = os.open(self.target, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as exc:
            raise KluisError("RestoreTargetInvalid", target=self.target, reason=exc.strerror) from None
        try:
            size = device_size(fd)
        except OSError as exc:
            os.close(fd)
            raise KluisError("RestoreTargetInvalid", target=self.target, reason=exc.strerror) from None
        if size < disk.size:
            os.close(fd)
            raise KluisError(
                "DiskRestoreTargetTooSmall",
                target=self.target,
                target_size=size,
                disk=disk.name,
                size=disk.size,
            )
        return fd

    def _open_image(self) -> tuple[int, str]:
        directory, base = os.path.split(self.target)
        partial = os.path.join(directory, f".{base}.kluis-partial-{secrets.token_hex(4)}")
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise KluisError("RestoreTargetInvalid", target=self.target, reason=exc.strerror) from None
        return fd, partial

    # -- writing --------------------------------------------------------------------------

    def _write_disk(self, fd: int, disk: DiskMap) -> None:
        in_flight: deque[Future[int]] = deque()
        limit = 2 * self.threads + 2
        with ThreadPoolExecutor(self.threads, thread_name_prefix="kluis-disk-restore") as pool:
            try:
                for seg in range(len(disk.segments)):
                    if self._should_stop():
                        raise KluisError("OperationCancelled", operation="disk restore")
                    in_flight.append(pool.submit(self._write_segment, fd, disk, seg))
                    while len(in_flight) >= limit:
                        self.progress.bytes += in_flight.popleft().result()
                        self._report(self.progress)
                while in_flight:
                    self.progress.bytes += in_flight.popleft().result()
                    self._report(self.progress)
            except BaseException:
                for f in in_flight:
                    f.cancel()
                raise

    def _buffer(self, minimum: int) -> memoryview:
        view: memoryview | None = getattr(self._local, "view", None)
        if view is None or len(view) < minimum:
            view = memoryview(bytearray(max(WRITE_BYTES, minimum)))
            self._local.view = view
        return view

    def _write_segment(self, fd: int, disk: DiskMap, seg: int) -> int:
        """Write one segment's blocks; returns the disk bytes it covers."""
        raw = load_segment(self.repo, self.point_id, disk, seg)
        first = seg * disk.segment_entries
        bs = disk.block_size
        buf = self._buffer(bs)
        run_start = 0  # disk offset of the run gathered in buf
        fill = 0
        zero_start = zero_len = 0
        written = zeros = 0
        for i in range(len(raw) // ID_SIZE):
            if self._should_stop():
                raise KluisError("OperationCancelled", operation="disk restore")
            block = first + i
            offset = block * bs
            bid = raw[i * ID_SIZE : (i + 1) * ID_SIZE]
            if bid == ZERO_ID:
                zeros += 1
                if zero_len and zero_start + zero_len == offset:
                    zero_len += disk.block_length(block)
                else:
                    self._zero_out(zero_start, zero_len)
                    zero_start, zero_len = offset, disk.block_length(block)
                continue
            data = load_block(self.repo, self.point_id, disk, block, bid, view=True)
            if fill and (run_start + fill != offset or fill + len(data) > len(buf)):
                write_all(fd, buf[:fill], run_start)
                written += fill
                fill = 0
            if not fill:
                run_start = offset
            buf[fill : fill + len(data)] = data
            fill += len(data)
        if fill:
            write_all(fd, buf[:fill], run_start)
            written += fill
        self._zero_out(zero_start, zero_len)
        with self._lock:
            self._written += written
            self._zero_blocks += zeros
        return min(disk.size, (first + len(raw) // ID_SIZE) * bs) - first * bs

    def _zero_out(self, offset: int, length: int) -> None:
        # Image files are fresh and sparse: their holes already read as zeros.
        if self._zero is not None and length > 0:
            self._zero.zero(offset, length)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class DiskImageReader:
    """Read-only random access to one disk of a recovery point. Thread-safe.

    Segments and blocks are fetched on demand and kept in small LRU caches, so
    reading a file system's metadata scattered over the disk stays cheap.
    """

    def __init__(
        self,
        repo: Repository,
        point_id: str,
        disk_name: str,
        *,
        cached_blocks: int = 16,
        cached_segments: int = 64,
    ) -> None:
        self.repo = repo
        self.point_id = point_id
        _header, manifest = repo.load_point(point_id)
        self.disk = find_disk(point_id, manifest, disk_name)
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._segments: OrderedDict[int, bytes] = OrderedDict()
        self._max_blocks = max(1, cached_blocks)
        self._max_segments = max(1, cached_segments)
        self._zeros = bytes(self.disk.block_size)
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """The disk's size in bytes."""
        return self.disk.size

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; short (or empty) at the end of the disk."""
        if offset < 0 or length < 0:
            raise KluisError("ValidationFailed", reason="offset and length must not be negative")
        end = min(self.disk.size, offset + length)
        if offset >= end:
            return b""
        bs = self.disk.block_size
        parts: list[bytes] = []
        pos = offset
        while pos < end:
            block = pos // bs
            data = self._block(block)
            start = pos - block * bs
            take = min(len(data) - start, end - pos)
            parts.append(data[start : start + take])
            pos += take
        return b"".join(parts)

    def _segment(self, seg: int) -> bytes:
        with self._lock:
            raw = self._segments.get(seg)
            if raw is not None:
                self._segments.move_to_end(seg)
                return raw
        raw = load_segment(self.repo, self.point_id, self.disk, seg)
        with self._lock:
            self._segments[seg] = raw
            while len(self._segments) > self._max_segments:
                self._segments.popitem(last=False)
        return raw

    def _block(self, block: int) -> bytes:
        with self._lock:
            data = self._blocks.get(block)
            if data is not None:
                self._blocks.move_to_end(block)
                return data
        seg, i = divmod(block, self.disk.segment_entries)
        raw = self._segment(seg)
        bid = raw[i * ID_SIZE : (i + 1) * ID_SIZE]
        if bid == ZERO_ID:
            return self._zeros[: self.disk.block_length(block)]
        data = bytes(load_block(self.repo, self.point_id, self.disk, block, bid))
        with self._lock:
            self._blocks[block] = data
            while len(self._blocks) > self._max_blocks:
                self._blocks.popitem(last=False)
        return data
