"""The worker side of a file-tree backup: reading, chunking and storing files.

Workers get files in batches (one task for many small files, so the walking thread
does not pay for a future per file) and return one outcome per file: its chunk ids
(raw bytes; hex appears only in the JSON of a tree), the stat after reading, and its
extended attributes, read through the descriptor that is open anyway.
"""

from __future__ import annotations

import base64
import errno
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from kluis.catalog import KluisError
from kluis.engine.chunker import MAX_SIZE, iter_chunks, make_chunker
from kluis.engine.format import BlobType
from kluis.engine.progress import Progress
from kluis.engine.repository import Repository
from kluis.engine.trees import Node

# errno values meaning "the data lives elsewhere and did not arrive" (network/FUSE/on-demand files).
_OFFLINE_ERRNOS = {
    errno.ENOTCONN,
    errno.ETIMEDOUT,
    errno.EHOSTDOWN,
    errno.EHOSTUNREACH,
    errno.ENOMEDIUM,
    errno.ESTALE,
    errno.ECONNABORTED,
    errno.ECONNRESET,
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.EREMOTEIO,
}
_READ_BUFFER = 2 * MAX_SIZE + 1024 * 1024
_NO_STAT = os.stat_result((0,) * 10)


def file_error(exc: OSError, path: str) -> KluisError:
    """The catalog warning for an OS error met while reading one file."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return KluisError("0x80070002", path=path, reason=reason)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EAGAIN, errno.EBUSY, errno.ETXTBSY):
        return KluisError("0x80070005", path=path, reason=reason)
    if exc.errno in _OFFLINE_ERRNOS:
        return KluisError("0x8007018b", path=path, reason=reason)
    return KluisError("0x80070570", path=path, reason=reason)


def fd_xattrs(fd: int) -> dict[str, str] | None:
    """Extended attributes of an open file, values base64 (as in trees)."""
    try:
        names = os.listxattr(fd)
    except OSError:
        return None
    if not names:
        return None
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = base64.b64encode(os.getxattr(fd, name)).decode()
        except OSError:
            continue
    return out or None


@dataclass(slots=True)
class FileOutcome:
    """What a worker made of one file."""

    content: list[bytes | int]
    st: os.stat_result
    error: KluisError | None = None
    changed: bool = False
    # The ctime moved while the file was open (e.g. an xattr was set): store the result,
    # but do not remember it in the checksum store, whose xattrs might be stale.
    unsteady: bool = False
    xattrs: dict[str, str] | None = None


@dataclass(slots=True)
class Pending:
    """A file whose content a worker is producing (or, for a hard link, another name's)."""

    node: Node
    path: bytes
    batch: Batch | None = None
    outcome: FileOutcome | None = None
    source: Pending | Node | None = None


@dataclass(slots=True)
class Batch:
    """Files handed to one worker task."""

    items: list[Pending] = field(default_factory=list)
    bytes: int = 0
    future: Future[list[FileOutcome]] | None = None


class Cancelled(Exception):
    """Raised inside the walk and the workers; the backup turns it into OperationCancelled."""


class FileReader:
    """Reads files for a backup; its methods run on the worker threads."""

    def __init__(
        self,
        repo: Repository,
        progress: Progress,
        lock: threading.Lock,
        should_stop: Callable[[], bool],
    ) -> None:
        self.repo = repo
        self.progress = progress
        self._lock = lock
        self._should_stop = should_stop
        self._local = threading.local()

    def _thread_state(self) -> tuple[Any, bytearray]:
        state = getattr(self._local, "state", None)
        if state is None:
            state = (make_chunker(self.repo.keys.chunker_seed), bytearray(_READ_BUFFER))
            self._local.state = state
        return state  # type: ignore[no-any-return]

    def read_batch(self, paths: list[bytes]) -> list[FileOutcome]:
        """Outcomes of several files, in order."""
        return [self.read_file(p) for p in paths]

    def _store_chunks(self, fd: int, start: int, end: int | None, content: list[bytes | int]) -> None:
        chunker, buf = self._thread_state()
        codec = self.repo.codec()
        index = self.repo.index
        pos = start

        def readinto(view: memoryview) -> int:
            nonlocal pos
            want = len(view) if end is None else min(len(view), end - pos)
            if want <= 0:
                return 0
            n = os.preadv(fd, [view[:want]], pos)
            pos += n
            return n

        progress = self.progress
        for chunk in iter_chunks(chunker, readinto, buf):
            if self._should_stop():
                raise Cancelled
            blob_id = codec.chunk_id(chunk)
            length = len(chunk)
            new = index.reserve(blob_id)
            if new:
                self.repo.writer().add(blob_id, BlobType.DATA, chunk)
            content.append(blob_id)
            with self._lock:
                progress.bytes += length
                if new:
                    progress.new_bytes += length

    def read_file(self, path: bytes) -> FileOutcome:
        """Store one file's chunks; errors become a warning in the outcome."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            try:
                fd = os.open(path, flags | os.O_NOATIME)
            except PermissionError:
                fd = os.open(path, flags)  # O_NOATIME needs ownership or root
        except OSError as exc:
            return FileOutcome([], _NO_STAT, file_error(exc, os.fsdecode(path)))
        try:
            st = os.fstat(fd)
            # Xattrs before the data: a change after this point moves the ctime checked below.
            xattrs = fd_xattrs(fd)
            content: list[bytes | int] = []
            try:
                if st.st_size and st.st_blocks * 512 < st.st_size:
                    self._read_sparse(fd, st.st_size, content)
                else:
                    self._store_chunks(fd, 0, None, content)
            except OSError as exc:
                return FileOutcome([], st, file_error(exc, os.fsdecode(path)))
            after = os.fstat(fd)
            changed = (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns)
            unsteady = changed or after.st_ctime_ns != st.st_ctime_ns
            return FileOutcome(content, after, None, changed, unsteady, xattrs)
        finally:
            os.close(fd)

    def _read_sparse(self, fd: int, size: int, content: list[bytes | int]) -> None:
        """Store only the data extents; holes become plain lengths in the content list."""
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                data = size  # no more data: the rest is a hole
            if data > pos:
                content.append(data - pos)
                with self._lock:
                    self.progress.bytes += data - pos
            if data >= size:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            self._store_chunks(fd, data, hole, content)
            pos = hole
