"""Backing up file trees into a recovery point.

The main thread walks the tree and builds directory listings; worker threads
read, chunk, hash, compress and encrypt files (the C libraries release the GIL,
so this runs on all cores). Files whose device, inode, size, mtime and ctime
match the checksum store are neither read nor hashed, and their xattrs are not
read either (any change to those moves the ctime).

A folder is first listed and stat'ed as a whole. When a signature of its entries
(names, the same five values, owners) matches the checksum store, its files need
no further look; when in the end its subfolders' tree ids match as well, its
stored tree id is reused without building, encoding or hashing the listing.

Directories are finished in post-order from a FIFO, and only a bounded number of
files is in flight, so memory does not grow with the size of the tree.

A file that cannot be read is skipped with a catalog warning in the failed-files
log; the recovery point is then "completed with warnings", not failed.

The walk and the hand-off to the workers are here; finishing folders (listings, tree
ids, checksum-store rows) is in :mod:`kluis.engine.backup_folders`.
"""

from __future__ import annotations

import marshal
import operator
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3

from kluis.catalog import KluisError, Severity
from kluis.engine.backup_folders import (
    DirJob,
    FolderFinishing,
    file_node,
    hex_content,
    split_ids,
)
from kluis.engine.backup_options import BackupOptions, BackupResult, ExclusionRules, drop_covered_sources
from kluis.engine.backup_read import Batch, Cancelled, FileOutcome, FileReader, Pending, file_error
from kluis.engine.checksum_store import ChecksumStore, DirRow, FileRow, decode_content, decode_xattrs
from kluis.engine.failed_files import FailedFilesLog
from kluis.engine.metadata import STAT_TYPES, group_name, node_from_stat, node_type, read_xattrs, user_name
from kluis.engine.progress import Progress, ProgressCallback, Throttle
from kluis.engine.repository import Repository
from kluis.engine.trees import (
    DIR,
    FILE,
    HARDLINK,
    Node,
    fs_name,
)
from kluis.engine.tuning import fewer_collections, tune_allocator

__all__ = ["BackupOptions", "BackupResult", "ExclusionRules", "FileBackup", "file_node"]

_MAX_IN_FLIGHT = 256
_MAX_PENDING_DIRS = 1024
# Small files go to the workers in batches: one task per this many files or bytes.
_BATCH_FILES = 48
_BATCH_BYTES = 4 * 1024 * 1024
_NAME = operator.attrgetter("name")
_OWNER = operator.itemgetter(6, 7)


class FileBackup(FolderFinishing):
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
        self._lock = threading.Lock()
        self.reader = FileReader(repo, self.progress, self._lock, self._should_stop)
        self._refs: set[bytes] = set()
        self._pending_dirs: deque[DirJob] = deque()
        self._batch = Batch()
        self._in_flight = 0
        self._unsettled: deque[Pending] = deque()
        self._hardlinks: dict[tuple[int, int], tuple[str, Pending | Node]] = {}
        self._root_dev: int | None = None
        self._dir_rows: dict[bytes, DirRow] = {}
        self._stale: list[bytes] = []
        self._identities: dict[str, str] = {}
        self._file_dirs: set[bytes] = set()
        self._tree_jobs: deque[Future[None]] = deque()
        self.dirs = 0
        self.files_read = 0
        self.errors: list[KluisError] = []

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

    def _walk(self, path: bytes, node: Node | None) -> DirJob:
        """List and stat a folder, then either walk only its subfolders or build it anew."""
        job = DirJob(node, path)
        steady = True
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=_NAME)
        except OSError as exc:
            self._warn(file_error(exc, os.fsdecode(path)), os.fsdecode(path))
            entries = []
            steady = False
        if self._should_stop():
            raise Cancelled
        rules = self.rules if self.rules.active else None
        markers = self.options.exclude_if_present
        # The hot loop of a no-change backup: one lstat and one tuple per entry, nothing more.
        kept = job.scanned
        dirs: list[os.DirEntry[bytes]] = []
        parts: list[tuple[Any, ...]] = []
        size = 0
        for entry in entries:
            raw = entry.name
            if rules is not None and rules.excluded(os.fsdecode(entry.path), fs_name(raw)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                full = os.fsdecode(entry.path)
                self._warn(file_error(exc, full), full)
                steady = False
                continue
            fmt = st.st_mode & 0o170000
            if fmt == stat.S_IFDIR:
                if markers and self._has_marker(entry.path):
                    continue
                dirs.append(entry)
            elif fmt == stat.S_IFREG:
                size += st.st_size
                if st.st_nlink > 1:
                    steady = False  # a hard link's node depends on which name this run saw first
            elif fmt not in STAT_TYPES:
                full = os.fsdecode(entry.path)
                self._warn(KluisError("SpecialFileSkipped", path=full), full)
                steady = False
                continue
            kept.append(entry)
            parts.append(
                (raw, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_uid, st.st_gid)
            )
        if self.cache is not None and steady:
            owners = sorted(set(map(_OWNER, parts)))
            names = [(user_name(u), group_name(g)) for u, g in owners]
            # marshal is a fast, exact serialisation; a Python upgrade may change its bytes,
            # which costs one slower run, never a wrong match.
            job.flat = blake3.blake3(marshal.dumps((parts, names), 2)).digest()[:16]
            row = self._dir_rows.pop(path, None)
            if row is not None and row[0] == job.flat:
                index = self.repo.index
                ids = split_ids(row[3])
                # Garbage collection may have removed what an old tree points at.
                if row[2] in index and index.contains_all(ids):
                    job.row = row
                    job.row_refs = ids
        if job.row is not None:
            # Entries as recorded: only the subfolders need a look.
            one_fs = self.options.one_file_system
            kids = job.kids
            for entry in dirs:
                if one_fs and entry.stat(follow_symlinks=False).st_dev != self._root_dev:
                    kids.append(None)
                else:
                    kids.append(self._walk(entry.path, None))
            self.progress.files += len(kept) - len(dirs)
            with self._lock:  # workers add to the same counter
                self.progress.bytes += size
        else:
            self._walk_changed(job)
        self._pending_dirs.append(job)
        self._drain()
        return job

    def _walk_changed(self, job: DirJob) -> None:
        """Build the nodes of a folder whose entries differ from the checksum store."""
        kept, job.scanned = job.scanned, []
        key = job.path.rstrip(b"/")
        known = self.cache.lookup_dir(key) if self.cache is not None and key in self._file_dirs else {}
        one_fs = self.options.one_file_system
        for entry in kept:
            full = entry.path
            name = fs_name(entry.name)
            st = entry.stat(follow_symlinks=False)
            ntype = STAT_TYPES[st.st_mode & 0o170000]
            if ntype == FILE:
                self._add_file(job, name, full, st, known.get(entry.name))
                self._drain()
                continue
            child = self._other_node(job, name, st, ntype, full)
            if child is None:
                continue
            if ntype == DIR:
                if one_fs and st.st_dev != self._root_dev:
                    job.items.append(child)  # keep the mount point itself, not what is mounted on it
                    continue
                job.items.append(self._walk(full, child))
            else:
                job.items.append(child)
                self.progress.files += 1

    def _add_file(self, job: DirJob, name: str, path: bytes, st: os.stat_result, row: FileRow | None) -> None:
        key = (st.st_dev, st.st_ino)
        rel = os.fsdecode(path).lstrip("/")
        if st.st_nlink > 1:
            first = self._hardlinks.get(key)
            if first is not None:
                # A second name of an inode already in this point: link to it, store nothing again.
                node = file_node(name, st, read_xattrs(path))
                node.type = HARDLINK
                node.target = first[0]
                job.items.append(Pending(node, path, source=first[1]))
                self.progress.files += 1
                return
        item: Node | Pending
        if row is not None and row[:5] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            content = decode_content(row[5])
            ids = [c for c in content if isinstance(c, bytes)]
            if self.repo.index.contains_all(ids):
                item = file_node(name, st, decode_xattrs(row[6]))
                item.content = hex_content(content)
                job.refs.extend(ids)
                job.items.append(item)
                self.progress.files += 1
                with self._lock:
                    self.progress.bytes += st.st_size
                if st.st_nlink > 1:
                    self._hardlinks[key] = (rel, item)
                return
        item = Pending(file_node(name, st, None), path)
        self._queue(item, st.st_size)
        job.items.append(item)
        self.files_read += 1
        if st.st_nlink > 1:
            self._hardlinks[key] = (rel, item)

    # -- handing files to the workers ------------------------------------------------------

    def _queue(self, item: Pending, size: int) -> None:
        batch = self._batch
        batch.items.append(item)
        batch.bytes += size
        item.batch = batch
        self._in_flight += 1
        self._unsettled.append(item)
        if len(batch.items) >= _BATCH_FILES or batch.bytes >= _BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        batch = self._batch
        if batch.items:
            batch.future = self._pool.submit(self.reader.read_batch, [p.path for p in batch.items])
            self._batch = Batch()

    def _drain(self, everything: bool = False) -> None:
        while self._pending_dirs and (
            everything or self._in_flight > _MAX_IN_FLIGHT or len(self._pending_dirs) > _MAX_PENDING_DIRS
        ):
            self._finish_dir(self._pending_dirs.popleft())
        # A huge directory has no finished subdirectory to hand back: wait for its oldest
        # files instead, so the queue of work (and its memory) stays bounded.
        unsettled = self._unsettled
        while unsettled and (unsettled[0].outcome is not None or self._in_flight > _MAX_IN_FLIGHT):
            self._settle(unsettled.popleft())
        self._report(self.progress)

    def _settle(self, item: Pending) -> FileOutcome:
        """The outcome of a file, waiting for its worker if needed; frees the future."""
        if item.outcome is None:
            src = item.source
            if isinstance(src, Pending):
                item.outcome = self._settle(src)
            elif src is not None:
                content = [bytes.fromhex(c) if isinstance(c, str) else c for c in src.content or ()]
                item.outcome = FileOutcome(content, os.stat_result((0,) * 10))
            else:
                batch = item.batch
                assert batch is not None
                if batch.future is None:
                    self._submit()  # still the batch being filled
                assert batch.future is not None
                outcomes = batch.future.result()
                for p, outcome in zip(batch.items, outcomes, strict=True):
                    p.outcome = outcome
                    p.batch = None
                self._in_flight -= len(batch.items)
                batch.items = []
                batch.future = None
        assert item.outcome is not None
        return item.outcome

    # -- the run ------------------------------------------------------------------------

    def run(self, paths: Sequence[str | os.PathLike[str]]) -> BackupResult:
        """Back up ``paths`` (files or directories) into one recovery point."""
        tune_allocator("backup")
        with fewer_collections():
            return self._run(paths)

    def _run(self, paths: Sequence[str | os.PathLike[str]]) -> BackupResult:
        started = time.monotonic()
        if any(not os.fspath(p) for p in paths):
            # An empty name would mean the current folder: most likely an unset variable.
            raise KluisError("BackupSourceMissing", path='""', reason="an empty path names nothing")
        sources = sorted({os.path.abspath(os.fspath(p)) for p in paths})
        for src in sources:
            if not os.path.lexists(src):
                raise KluisError("BackupSourceMissing", path=src, reason="no such file or directory")
        sources = drop_covered_sources(
            sources, self.rules, self.options.exclude_if_present, self.options.one_file_system
        )
        stored_before = sum(w.bytes_written for w in self.repo._writers)
        self._pool = ThreadPoolExecutor(self.options.threads, thread_name_prefix="kluis-backup")
        # Listings are compressed, encrypted and packed by one thread of their own, so the
        # walking thread only encodes them.
        self._tree_pool = ThreadPoolExecutor(1, thread_name_prefix="kluis-trees")
        try:
            root_tree = self._build_root(sources)
            self._tree_pool.shutdown(wait=True)
            while self._tree_jobs:
                self._tree_jobs.popleft().result()
        except BaseException as exc:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._tree_pool.shutdown(wait=True, cancel_futures=True)
            self.repo.index.forget_pending()
            self.failed.close()
            if isinstance(exc, Cancelled):
                # Nothing was committed: packs already uploaded are reused by the next run.
                raise KluisError("OperationCancelled", operation="backup") from None
            raise
        self._pool.shutdown(wait=True)
        if self.cache is not None:
            self.cache.forget_dirs(self._stale)
            for key, value in self._identities.items():
                self.cache.set_meta(key, value)
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
            self._load_rows(b"/")
            job = self._walk(b"/", Node(name="", type=DIR))
            self._drain(everything=True)
            self._stale.extend(self._dir_rows)
            self._dir_rows = {}
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
                self._check_identity(path, st)
                self._load_rows(path)
                job = self._walk(path, node)
                self._drain(everything=True)
                self._stale.extend(self._dir_rows)  # rows of folders this walk did not meet
                self._dir_rows = {}
                assert job.tree_id is not None
                node.subtree = job.tree_id.hex()
            elif ntype == FILE:
                holder = DirJob(None, parent)
                known = self.cache.lookup_dir(parent.rstrip(b"/")) if self.cache is not None else {}
                self._add_file(holder, name, path, st, known.get(os.fsencode(name)))
                single = self._finish_single(holder)
                if single is None:
                    continue  # unreadable: already in the failed-files log
                node = single
            nodes.append(node)
        tree_id = self._store_tree(nodes)
        self._refs.add(tree_id)
        return tree_id

    def _check_identity(self, path: bytes, st: os.stat_result) -> None:
        """Warn when a protected folder is not the folder the last backup read.

        A folder deleted and created again (or a file system mounted on its path) has a
        new (device, inode): nothing below it matches the checksum store, so all of it is
        read again. That is correct but slow and surprising, so the point says why.
        """
        if self.cache is None:
            return
        key = "folder-identity:" + os.fsdecode(path)
        now = f"{st.st_dev}:{st.st_ino}"
        before = self.cache.get_meta(key)
        if before is not None and before != now:
            self._warn(KluisError("ProtectedFolderRecreated", path=os.fsdecode(path)), os.fsdecode(path))
        self._identities[key] = now  # recorded only when this backup completes

    def _load_rows(self, top: bytes) -> None:
        """What the checksum store knows about the folders below one source, in two queries."""
        if self.cache is not None:
            self._dir_rows = self.cache.dir_rows(top)
            self._file_dirs = self.cache.file_dirs(top)

    def _finish_single(self, holder: DirJob) -> Node | None:
        """Resolve the single file of a source that is a file, not a directory."""
        item = holder.items[0]
        refs = holder.refs
        if isinstance(item, Pending):
            node, _ = self._resolve(item, refs)
        else:
            assert isinstance(item, Node)
            node = item
        self._refs.update(refs)
        return node
