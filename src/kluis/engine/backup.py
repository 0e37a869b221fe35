"""Backing up file trees into a recovery point.

The main thread walks the tree and builds directory listings; worker threads
read, chunk, hash, compress and encrypt files (the C libraries release the GIL,
so this runs on all cores). Files whose device, inode, size, mtime and ctime
match the checksum store are neither read nor hashed.

Directories are finished in post-order from a FIFO, and only a bounded number of
files is in flight, so memory does not grow with the size of the tree.

A file that cannot be read is skipped with a catalog warning in the failed-files
log; the recovery point is then "completed with warnings", not failed.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kluis.catalog import KluisError, Severity
from kluis.engine.checksum_store import ChecksumStore, decode_content
from kluis.engine.chunker import MAX_SIZE, iter_chunks, make_chunker
from kluis.engine.failed_files import FailedFilesLog
from kluis.engine.format import BlobType
from kluis.engine.metadata import node_from_stat, node_type
from kluis.engine.progress import Progress, ProgressCallback, Throttle
from kluis.engine.repository import Repository
from kluis.engine.trees import DIR, FILE, HARDLINK, Node, encode_tree, fs_name
from kluis.engine.tuning import tune_allocator

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
_MAX_IN_FLIGHT = 256
_MAX_PENDING_DIRS = 1024
_READ_BUFFER = 2 * MAX_SIZE + 1024 * 1024


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


@dataclass
class BackupOptions:
    """What to leave out and how hard to work."""

    excludes: Sequence[str] = ()
    exclude_if_present: Sequence[str] = ()
    one_file_system: bool = False
    threads: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    hostname: str = field(default_factory=socket.gethostname)
    item: str | None = None
    tags: Sequence[str] = ()


@dataclass
class BackupResult:
    """What a finished backup reports."""

    point_id: str
    status: str
    files: int
    dirs: int
    bytes: int
    new_bytes: int
    stored_bytes: int
    warnings: int
    files_read: int
    failed_files_log: str | None
    seconds: float
    first_warnings: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """For job reports and ``--json``."""
        return dict(self.__dict__)


class ExclusionRules:
    """Glob patterns: without a slash they match a name, with one the whole path."""

    def __init__(self, patterns: Sequence[str]) -> None:
        names = [p for p in patterns if "/" not in p]
        paths = [p.rstrip("/") for p in patterns if "/" in p]
        self._name_re = re.compile("|".join(fnmatch.translate(p) for p in names)) if names else None
        self._path_re = re.compile("|".join(fnmatch.translate(p) for p in paths)) if paths else None
        self.active = bool(names or paths)

    def excluded(self, path: str, name: str) -> bool:
        """Whether a path is excluded."""
        if self._name_re is not None and self._name_re.match(name):
            return True
        return self._path_re is not None and self._path_re.match(path) is not None


@dataclass
class _FileOutcome:
    content: list[str | int]
    st: os.stat_result
    error: KluisError | None = None
    changed: bool = False


@dataclass
class _Pending:
    """A file whose content a worker is producing (or, for a hard link, another name's)."""

    node: Node
    path: bytes
    future: Future[_FileOutcome] | None = None
    outcome: _FileOutcome | None = None
    source: _Pending | Node | None = None


@dataclass
class _DirJob:
    node: Node
    path: bytes
    items: list[Node | _Pending | _DirJob] = field(default_factory=list)
    tree_id: bytes | None = None


class _Cancelled(Exception):
    """Raised inside the walk and the workers; run() turns it into OperationCancelled."""


class FileBackup:
    """One backup run of a set of paths into a repository."""

    def __init__(
        self,
        repo: Repository,
        *,
        checksum_store: ChecksumStore | None = None,
        options: BackupOptions | None = None,
        progress: ProgressCallback | None = None,
        failed_log: Path | None = None,
        should_stop: Callable[[], bool] | None = None,
        estimate_bytes: int | None = None,
    ) -> None:
        self.repo = repo
        self.cache = checksum_store
        self.options = options or BackupOptions()
        self.rules = ExclusionRules(self.options.excludes)
        self.progress = Progress(phase="Transfer data to vault", total_bytes=estimate_bytes)
        self._report = Throttle(progress)
        self.failed = FailedFilesLog(failed_log)
        self._should_stop = should_stop or (lambda: False)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._refs: set[bytes] = set()
        self._pending_dirs: deque[_DirJob] = deque()
        self._in_flight = 0
        self._unsettled: deque[_Pending] = deque()
        self._hardlinks: dict[tuple[int, int], tuple[str, _Pending | Node]] = {}
        self._root_dev: int | None = None
        self._known: dict[bytes, tuple[int, int, int, int, int, bytes]] = {}
        self.dirs = 0
        self.files_read = 0
        self.errors: list[KluisError] = []

    # -- worker side ------------------------------------------------------------------

    def _thread_state(self) -> tuple[Any, bytearray]:
        state = getattr(self._local, "state", None)
        if state is None:
            state = (make_chunker(self.repo.keys.chunker_seed), bytearray(_READ_BUFFER))
            self._local.state = state
        return state  # type: ignore[no-any-return]

    def _store_chunks(self, fd: int, start: int, end: int | None, content: list[str | int]) -> None:
        chunker, buf = self._thread_state()
        codec = self.repo.codec()
        pos = start

        def readinto(view: memoryview) -> int:
            nonlocal pos
            want = len(view) if end is None else min(len(view), end - pos)
            if want <= 0:
                return 0
            n = os.preadv(fd, [view[:want]], pos)
            pos += n
            return n

        for chunk in iter_chunks(chunker, readinto, buf):
            if self._should_stop():
                raise _Cancelled
            blob_id = codec.chunk_id(chunk)
            length = len(chunk)
            if self.repo.index.reserve(blob_id):
                self.repo.writer().add(blob_id, BlobType.DATA, chunk)
                with self._lock:
                    self.progress.new_bytes += length
            content.append(blob_id.hex())
            with self._lock:
                self.progress.bytes += length

    def _read_file(self, path: bytes) -> _FileOutcome:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            try:
                fd = os.open(path, flags | os.O_NOATIME)
            except PermissionError:
                fd = os.open(path, flags)  # O_NOATIME needs ownership or root
        except OSError as exc:
            return _FileOutcome([], os.stat_result((0,) * 10), file_error(exc, os.fsdecode(path)))
        try:
            st = os.fstat(fd)
            content: list[str | int] = []
            try:
                if st.st_size and st.st_blocks * 512 < st.st_size:
                    self._read_sparse(fd, st.st_size, content)
                else:
                    self._store_chunks(fd, 0, None, content)
            except OSError as exc:
                return _FileOutcome([], st, file_error(exc, os.fsdecode(path)))
            after = os.fstat(fd)
            changed = (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns)
            return _FileOutcome(content, after, None, changed)
        finally:
            os.close(fd)

    def _read_sparse(self, fd: int, size: int, content: list[str | int]) -> None:
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

    # -- walking ------------------------------------------------------------------------

    def _warn(self, error: KluisError, path: str) -> None:
        self.failed.add(error, path)
        if error.entry.severity != Severity.INFO:
            self.progress.warnings += 1
        self.errors.append(error) if len(self.errors) < 1000 else None

    def _has_marker(self, path: bytes) -> bool:
        return any(
            os.path.lexists(os.path.join(path, os.fsencode(m))) for m in self.options.exclude_if_present
        )

    def _add_file(self, job: _DirJob, node: Node, path: bytes, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        rel = os.fsdecode(path).lstrip("/")
        if st.st_nlink > 1:
            first = self._hardlinks.get(key)
            if first is not None:
                # A second name of an inode already in this point: link to it, store nothing again.
                node.type = HARDLINK
                node.target = first[0]
                job.items.append(_Pending(node, path, source=first[1]))
                self.progress.files += 1
                return
        cached = None
        known = self._known.get(path.rpartition(b"/")[2]) if self._known else None
        if known is not None and known[:5] == (
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        ):
            cached = decode_content(known[5])
            index = self.repo.index
            if not all(bytes.fromhex(c) in index for c in cached if isinstance(c, str)):
                cached = None
        if cached is not None:
            node.content = cached
            self.progress.files += 1
            self.progress.bytes += st.st_size
            item: Node | _Pending = node
            job.items.append(node)
        else:
            pending = _Pending(node, path, self._pool.submit(self._read_file, path))
            self._in_flight += 1
            self._unsettled.append(pending)
            self.files_read += 1
            item = pending
            job.items.append(item)
        if st.st_nlink > 1:
            self._hardlinks[key] = (rel, item)

    def _walk(self, path: bytes, node: Node) -> _DirJob:
        job = _DirJob(node, path)
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            self._warn(file_error(exc, os.fsdecode(path)), os.fsdecode(path))
            entries = []
        if self._should_stop():
            raise _Cancelled
        # What the checksum store knows about this directory, in one query.
        self._known = self.cache.lookup_dir(path.rstrip(b"/") or b"") if self.cache is not None else {}
        has_rules = self.rules.active
        for entry in entries:
            full = entry.path
            name = fs_name(entry.name)
            if has_rules and self.rules.excluded(os.fsdecode(full), name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
                ntype = node_type(st)
                if ntype is None:
                    self._warn(KluisError("SpecialFileSkipped", path=os.fsdecode(full)), os.fsdecode(full))
                    continue
                child = node_from_stat(name, st, ntype, full)
            except OSError as exc:
                self._warn(file_error(exc, os.fsdecode(full)), os.fsdecode(full))
                continue
            if ntype == DIR:
                if self.options.exclude_if_present and self._has_marker(full):
                    continue
                if self.options.one_file_system and st.st_dev != self._root_dev:
                    job.items.append(child)  # keep the mount point itself, not what is mounted on it
                    continue
                known = self._known
                job.items.append(self._walk(full, child))
                self._known = known
            elif ntype == FILE:
                self._add_file(job, child, full, st)
            else:
                job.items.append(child)
                self.progress.files += 1
            self._drain()
        self._pending_dirs.append(job)
        self._drain()
        return job

    def _drain(self, everything: bool = False) -> None:
        while self._pending_dirs and (
            everything or self._in_flight > _MAX_IN_FLIGHT or len(self._pending_dirs) > _MAX_PENDING_DIRS
        ):
            self._finish_dir(self._pending_dirs.popleft())
        # A huge directory has no finished subdirectory to hand back: wait for its oldest
        # files instead, so the queue of work (and its memory) stays bounded.
        while self._in_flight > _MAX_IN_FLIGHT and self._unsettled:
            self._settle(self._unsettled.popleft())
        self._report(self.progress)

    def _settle(self, item: _Pending) -> _FileOutcome:
        """The outcome of a file, waiting for its worker if needed; frees the future."""
        if item.outcome is None:
            if item.source is not None:
                src = item.source
                item.outcome = (
                    self._settle(src)
                    if isinstance(src, _Pending)
                    else _FileOutcome(list(src.content or []), os.stat_result((0,) * 10))
                )
            else:
                assert item.future is not None
                item.outcome = item.future.result()
                item.future = None
                self._in_flight -= 1
        return item.outcome

    def _finish_dir(self, job: _DirJob) -> None:
        nodes: list[Node] = []
        for item in job.items:
            if isinstance(item, _DirJob):
                assert item.tree_id is not None, "directories finish children first"
                item.node.subtree = item.tree_id.hex()
                nodes.append(item.node)
            elif isinstance(item, _Pending):
                outcome = self._settle(item)
                if outcome.error is not None:
                    if item.node.type != HARDLINK:  # the first name already reported it
                        self._warn(outcome.error, os.fsdecode(item.path))
                    continue
                if item.node.type != HARDLINK:
                    self.progress.files += 1
                    if outcome.changed:
                        self._warn(
                            KluisError("FileChangedWhileReading", path=os.fsdecode(item.path)),
                            os.fsdecode(item.path),
                        )
                    st = outcome.st
                    item.node.size = st.st_size
                    item.node.mtime_ns = st.st_mtime_ns
                    item.node.ctime_ns = st.st_ctime_ns
                    if self.cache is not None and not outcome.changed:
                        self.cache.record(
                            item.path,
                            st.st_dev,
                            st.st_ino,
                            st.st_size,
                            st.st_mtime_ns,
                            st.st_ctime_ns,
                            outcome.content,
                        )
                item.node.content = outcome.content
                nodes.append(item.node)
            else:
                nodes.append(item)
        for n in nodes:
            if n.content:
                self._refs.update(bytes.fromhex(c) for c in n.content if isinstance(c, str))
        job.tree_id = self.repo.save_blob(BlobType.TREE, encode_tree(nodes))
        self._refs.add(job.tree_id)
        # The parent keeps this job only for its tree id: drop the nodes and futures now,
        # or a whole tree's worth of them would stay in memory until the root is done.
        job.items = []
        self.dirs += 1

    # -- the run ------------------------------------------------------------------------

    def run(self, paths: Sequence[str | os.PathLike[str]]) -> BackupResult:
        """Back up ``paths`` (files or directories) into one recovery point."""
        tune_allocator()
        started = time.monotonic()
        sources = sorted({os.path.abspath(os.fspath(p)) for p in paths})
        for src in sources:
            if not os.path.lexists(src):
                raise KluisError("BackupSourceMissing", path=src, reason="no such file or directory")
        stored_before = sum(w.bytes_written for w in self.repo._writers)
        self._pool = ThreadPoolExecutor(self.options.threads, thread_name_prefix="kluis-backup")
        try:
            root_tree = self._build_root(sources)
        except BaseException as exc:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self.repo.index.forget_pending()
            self.failed.close()
            if isinstance(exc, _Cancelled):
                # Nothing was committed: packs already uploaded are reused by the next run.
                raise KluisError("OperationCancelled", operation="backup") from None
            raise
        self._pool.shutdown(wait=True)
        if self.cache is not None:
            self.cache.commit()
        self.failed.close()
        status = "completed_with_warnings" if self.progress.warnings else "completed"
        manifest = {
            "type": "files",
            "root": root_tree.hex(),
            "paths": sources,
            "hostname": self.options.hostname,
            "item": self.options.item,
            "tags": list(self.options.tags),
            "excludes": list(self.options.excludes),
            "status": status,
            "stats": {
                "files": self.progress.files,
                "dirs": self.dirs,
                "bytes": self.progress.bytes,
                "new_bytes": self.progress.new_bytes,
                "warnings": self.progress.warnings,
            },
        }
        point_id = self.repo.save_point(
            "files",
            manifest,
            self._refs,
            {
                "status": status,
                "size": self.progress.bytes,
                "files": self.progress.files,
                "item": self.options.item,
            },
        )
        if self.cache is not None:
            self.cache.set_meta("last_backup_bytes", str(self.progress.bytes))
        self._report(self.progress, force=True)
        stored = sum(w.bytes_written for w in self.repo._writers) - stored_before
        return BackupResult(
            point_id=point_id,
            status=status,
            files=self.progress.files,
            dirs=self.dirs,
            bytes=self.progress.bytes,
            new_bytes=self.progress.new_bytes,
            stored_bytes=stored,
            warnings=self.progress.warnings,
            files_read=self.files_read,
            failed_files_log=str(self.failed.path) if self.failed.path and self.failed.count else None,
            seconds=round(time.monotonic() - started, 3),
            first_warnings=self.failed.first[:20],
        )

    def _build_root(self, sources: list[str]) -> bytes:
        """Walk every source and nest them under their real parent directories."""
        top: dict[str, Any] = {}
        for src in sources:
            parts = [p for p in src.split("/") if p]
            level = top
            for part in parts[:-1]:
                level = level.setdefault(part, {})
            level[parts[-1] if parts else ""] = src  # "" for "/" itself
        return self._level_tree(b"/", top)

    def _level_tree(self, parent: bytes, level: dict[str, Any]) -> bytes:
        if "" in level:  # the whole file system root was asked for
            self._root_dev = os.lstat("/").st_dev
            job = self._walk(b"/", Node(name="", type=DIR))
            self._drain(everything=True)
            assert job.tree_id is not None
            return job.tree_id
        nodes: list[Node] = []
        for name, sub in sorted(level.items()):
            path = os.path.join(parent, os.fsencode(name))
            st = os.lstat(path)
            ntype = node_type(st)
            if ntype is None:
                continue
            node = node_from_stat(name, st, ntype, path)
            if isinstance(sub, dict):
                node.subtree = self._level_tree(path, sub).hex()
            elif ntype == DIR:
                self._root_dev = st.st_dev
                job = self._walk(path, node)
                self._drain(everything=True)
                assert job.tree_id is not None
                node.subtree = job.tree_id.hex()
            elif ntype == FILE:
                holder = _DirJob(Node(name="", type=DIR), parent)
                if self.cache is not None:
                    self._known = self.cache.lookup_dir(parent.rstrip(b"/"))
                self._add_file(holder, node, path, st)
                self._finish_items_only(holder)
                if not holder.items:
                    continue  # unreadable: already in the failed-files log
                node = holder.items[0] if isinstance(holder.items[0], Node) else node
            nodes.append(node)
        tree_id = self.repo.save_blob(BlobType.TREE, encode_tree(nodes))
        self._refs.add(tree_id)
        return tree_id

    def _finish_items_only(self, holder: _DirJob) -> None:
        """Resolve the single file of a source that is a file, not a directory."""
        item = holder.items[0]
        if isinstance(item, _Pending):
            outcome = self._settle(item)
            if outcome.error is not None:
                self._warn(outcome.error, os.fsdecode(item.path))
                holder.items = []
                return
            self.progress.files += 1
            item.node.content = outcome.content
            item.node.size = outcome.st.st_size
            holder.items = [item.node]
        for c in holder.items[0].content or () if isinstance(holder.items[0], Node) else ():
            if isinstance(c, str):
                self._refs.add(bytes.fromhex(c))
