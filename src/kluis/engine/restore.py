"""Restoring a recovery point's files into a target directory.

Safety first: every path is walked from the target with ``openat`` and
``O_NOFOLLOW``, names are checked (no ``..``, no slash, no NUL, never empty),
new entries are made with calls that fail rather than follow or replace what is
there (``O_CREAT | O_EXCL``, ``symlink``, ``mkdir``), and an existing entry is
only ever replaced by renaming a temporary one over it. So a damaged or forged
recovery point, or a symlink swapped in while the restore runs, can never make
it write outside the target.

Hard links, symbolic links, devices and FIFOs are made in
:mod:`kluis.engine.restore_entries`.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kluis.catalog import KluisError, Severity
from kluis.engine.format import IndexEntry
from kluis.engine.metadata import apply_metadata_fd, has_default_acl
from kluis.engine.progress import Progress, ProgressCallback, Throttle
from kluis.engine.repository import Repository
from kluis.engine.restore_entries import DIR_FLAGS, FileBatch, SpecialEntries, copy_names
from kluis.engine.restore_plan import PlannedReader, Ticket
from kluis.engine.restore_select import Selection
from kluis.engine.trees import (
    DIR,
    FILE,
    Node,
    decode_tree,
    os_name,
)
from kluis.engine.tuning import fewer_collections, tune_allocator
from kluis.stores import Store

CONFLICT_MODES = ("overwrite", "skip", "copy")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# A worker gets up to this many files (or bytes) of one directory at a time.
_BATCH_FILES = 32
_BATCH_BYTES = 8 * 1024 * 1024
# The walk plans reads this far (in stored bytes) ahead of the workers, if the batches in
# flight allow: a folder of tiny files makes batches of a few KiB each.
_LEAD = 32 * 1024 * 1024


@dataclass
class RestoreOptions:
    """What to restore and how to treat what is already there."""

    include: Sequence[str] = ()
    conflict: str = "overwrite"
    owner: bool | None = None  # None: restore owners when running as root
    threads: int = 0  # worker threads; 0: as many as restore_threads(store) says


def restore_threads(store: Store) -> int:
    """Worker threads for a restore from ``store``: one per core, at most 4, and one more when
    the store is remote.

    A worker that needs a pack segment waits for it. From a local disk that wait is short;
    through a vault or object storage each read is a round trip, and with only one worker
    per core the cores sit idle meanwhile. On two cores, restores through a vault on loopback
    took 26.0 to 29.3 s with three workers against 29.2 to 34.4 s with two (alternating
    runs); from a local repository a third worker made no difference (23.9 to 26.4 s
    against 23.4 to 25.6 s).
    """
    local = max(1, min(4, os.cpu_count() or 1))
    return local + 1 if store.remote else local


@dataclass
class RestoreResult:
    """What a finished restore reports."""

    point_id: str
    target: str
    files: int
    dirs: int
    bytes: int
    skipped: int
    warnings: list[dict[str, Any]]
    seconds: float

    @property
    def status(self) -> str:
        """completed, or completed_with_warnings."""
        return "completed_with_warnings" if self.warnings else "completed"

    def as_dict(self) -> dict[str, Any]:
        """For job reports and ``--json``."""
        return {**self.__dict__, "status": self.status}


def open_files_limit() -> int:
    """The soft limit on open descriptors (each batch in flight holds one for its folder)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def safe_name(name: str) -> bool:
    """Whether a tree name can be created inside a directory without escaping it."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\x00" not in name


class Restorer(SpecialEntries):
    """One restore of one recovery point.

    The main thread walks the listings, creates directories and hands batches of
    files to worker threads. Workers create each file under its final name with
    ``O_CREAT | O_EXCL`` (which never follows or replaces anything); only when
    something is already there does the conflict mode decide, and an overwrite
    then writes a temporary file and renames it into place. Metadata is set on the
    open descriptor before it is closed.
    """

    def __init__(
        self,
        repo: Repository,
        point_id: str,
        target: str | os.PathLike[str],
        *,
        options: RestoreOptions | None = None,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.repo = repo
        self.point_id = point_id
        self.target = os.path.abspath(os.fspath(target))
        self.options = options or RestoreOptions()
        if self.options.conflict not in CONFLICT_MODES:
            raise KluisError(
                "ValidationFailed", reason=f"conflict mode must be one of {', '.join(CONFLICT_MODES)}"
            )
        self.owner = self.options.owner if self.options.owner is not None else os.geteuid() == 0
        self.select = Selection(self.options.include)
        self.progress = Progress(phase="Restore")
        self._report = Throttle(progress)
        self._should_stop = should_stop or (lambda: False)
        self._lock = threading.Lock()
        self._warnings: list[dict[str, Any]] = []
        # Directories in the order they were entered: (components, node, created by us, inherits ACL).
        self._dirs: list[tuple[list[bytes], Node, bool, bool]] = []
        self._links: dict[str, tuple[list[bytes], Future[None]]] = {}
        self._final: dict[str, bytes] = {}  # rel path of a multiply-linked file -> name it got
        self._futures: deque[Future[None]] = deque()
        self._tmp_seq = itertools.count()
        self.threads = self.options.threads or restore_threads(repo.store)
        self._batch_cap = max(self._min_in_flight, min(1024, open_files_limit() // 4))
        self.skipped = 0
        self.dirs = 0

    # -- reporting ------------------------------------------------------------------------

    def _warn(self, error: KluisError) -> None:
        with self._lock:
            if error.entry.severity != Severity.INFO:
                self.progress.warnings += 1
            if len(self._warnings) < 1000:
                self._warnings.append(error.to_dict())

    def _fail_file(self, rel: str, reason: str) -> None:
        self._warn(KluisError("RestoreFileFailed", path=rel, reason=reason))

    def _skip(self) -> None:
        with self._lock:
            self.skipped += 1

    def _tmp_name(self) -> bytes:
        return b".kluis-restore-%x-%x" % (os.getpid(), next(self._tmp_seq))

    # -- the run --------------------------------------------------------------------------

    def run(self) -> RestoreResult:
        """Restore the selected part of the point into the target."""
        tune_allocator()
        with fewer_collections():
            return self._run()

    def _run(self) -> RestoreResult:
        started = time.monotonic()
        _header, manifest = self.repo.load_point(self.point_id)
        root_id = bytes.fromhex(str(manifest["root"]))
        try:
            os.makedirs(self.target, exist_ok=True)
            root_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise KluisError("RestoreTargetInvalid", target=self.target, reason=exc.strerror) from None
        self._root_fd = root_fd
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="kluis-restore")
        # One fetch thread reads ahead from a local disk; a remote store gets two, so that
        # one round trip is always under way while the other's bytes are handed over.
        self._reader = PlannedReader(self.repo.store, fetchers=2 if self.repo.store.remote else 1)
        try:
            self._restore_tree(root_fd, [], "", root_id, False, False, has_default_acl(root_fd))
            self._reader.finish_planning()
            while self._futures:
                self._futures.popleft().result()
            self._pool.shutdown(wait=True)
            self._apply_dir_metadata()
            for pattern in self.select.unmatched():
                self._warn(KluisError("RestorePathNotInPoint", path=pattern, point=self.point_id))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._reader.close()
            os.close(root_fd)
        self._report(self.progress, force=True)
        return RestoreResult(
            point_id=self.point_id,
            target=self.target,
            files=self.progress.files,
            dirs=self.dirs,
            bytes=self.progress.bytes,
            skipped=self.skipped,
            warnings=self._warnings,
            seconds=round(time.monotonic() - started, 3),
        )

    def _load_tree(self, tree_id: bytes, rel: str) -> list[Node] | None:
        try:
            data = self.repo.load_blob(tree_id, where=f"the listing of /{rel}")
            return decode_tree(data, blob=tree_id.hex(), point=self.point_id)
        except KluisError as exc:
            if rel == "":
                raise
            self._warn(exc)
            return None

    def _restore_tree(
        self,
        dir_fd: int,
        comps: list[bytes],
        rel: str,
        tree_id: bytes,
        everything: bool,
        fresh: bool,
        acl: bool,
    ) -> None:
        """Restore one listing into ``dir_fd``.

        ``fresh``: this run created the directory; ``acl``: entries created in it inherit
        a default ACL (so new files are not free of attributes).
        """
        nodes = self._load_tree(tree_id, rel)
        if nodes is None:
            return
        batch = FileBatch()
        watch = everything and self.select.pending  # a pattern may still meet something in here
        for node in nodes:
            if self._should_stop():
                raise KluisError("OperationCancelled", operation="restore")
            child_rel = f"{rel}/{node.name}" if rel else node.name
            if not safe_name(node.name):
                self._warn(
                    KluisError(
                        "RestoreUnsafePath",
                        path=child_rel,
                        reason="the name is not a plain file name",
                        target=self.target,
                    )
                )
                continue
            if everything:
                decision = "all"
                if watch:
                    self.select.observe(child_rel)
            else:
                decision = self.select.decide(child_rel, node.type == DIR)
            if decision == "none":
                continue
            name = os_name(node.name)
            if node.type == DIR:
                self._restore_dir(dir_fd, comps, name, child_rel, node, decision == "all", acl)
            elif node.type == FILE:
                batch.items.append((name, child_rel, node))
                batch.bytes += node.size
                if node.nlink:
                    # Later hard links to this file wait for its batch: send it now.
                    self._links[child_rel] = (comps, self._submit(dir_fd, batch, acl))
                    batch = FileBatch()
                elif len(batch.items) >= _BATCH_FILES or batch.bytes >= _BATCH_BYTES:
                    self._submit(dir_fd, batch, acl)
                    batch = FileBatch()
            else:
                # Links, devices and FIFOs are made here; files waiting in the batch do not
                # matter to them (a hard link's first name was sent off on its own).
                self._restore_special(dir_fd, comps, name, child_rel, node, acl)
            self._report(self.progress)
        if batch.items:
            self._submit(dir_fd, batch, acl)

    def _submit(self, dir_fd: int, batch: FileBatch, acl: bool) -> Future[None]:
        # The walk runs ahead of the workers by a number of batches (so that they have work
        # queued when it reaches folders of many tiny files) and, past that, until the plan
        # leads by _LEAD bytes (so that reads are planned and fetched before they are needed).
        futures = self._futures
        while futures and (
            len(futures) >= self._batch_cap
            or (len(futures) >= self._min_in_flight and self._reader.ahead >= _LEAD)
        ):
            futures.popleft().result()
        located = self._locate(batch)
        ticket = self._reader.plan(e for entries in located for e in entries if e is not None)
        fd = os.dup(dir_fd)
        try:
            future = self._pool.submit(self._write_batch, fd, batch.items, located, acl, ticket)
        except BaseException:
            self._abandon(fd, ticket)
            raise
        future.add_done_callback(functools.partial(self._if_cancelled, fd, ticket))
        self._futures.append(future)
        return future

    def _abandon(self, fd: int, ticket: Ticket) -> None:
        """Close a batch's folder descriptor and drop its planned reads (it never ran)."""
        os.close(fd)
        self._reader.release(ticket)

    def _if_cancelled(self, fd: int, ticket: Ticket, future: Future[None]) -> None:
        # A batch cancelled before it ran (a restore stopping) does not close its descriptor
        # itself; in the agent daemon up to a thousand would stay open per stopped restore.
        if future.cancelled():
            self._abandon(fd, ticket)

    def _locate(self, batch: FileBatch) -> list[list[IndexEntry | None]]:
        """Where each file's blobs lie, file by file in the order its worker reads them.

        Looked up once, here, for the plan; the worker writes from the same entries (None:
        the blob is not in the index, which the worker reports for its file).
        """
        get = self.repo.index.get
        return [
            [get(bytes.fromhex(part)) for part in node.content or () if isinstance(part, str)]
            for _name, _rel, node in batch.items
        ]

    @property
    def _min_in_flight(self) -> int:
        return 32 * self.threads

    # -- directories ----------------------------------------------------------------------

    def _restore_dir(
        self, dir_fd: int, comps: list[bytes], name: bytes, rel: str, node: Node, everything: bool, acl: bool
    ) -> None:
        fd, final, fresh = self._enter_dir(dir_fd, name, rel)
        if fd is None:
            return
        try:
            self.dirs += 1
            sub = [*comps, final]
            # A directory made here inherits its parent's default ACL; one that was there has its own.
            sub_acl = acl if fresh else has_default_acl(fd)
            self._dirs.append((sub, node, fresh, acl))
            if node.subtree:
                self._restore_tree(fd, sub, rel, bytes.fromhex(node.subtree), everything, fresh, sub_acl)
        finally:
            os.close(fd)

    def _enter_dir(self, dir_fd: int, name: bytes, rel: str) -> tuple[int | None, bytes, bool]:
        """Create (if needed) and open a directory without following links.

        Returns the descriptor (None when it cannot be used), the name it got and
        whether this run created it.
        """
        final = name
        fresh = True
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            fresh = False
        except OSError as exc:
            self._fail_file(rel, exc.strerror or str(exc))
            return None, name, False
        try:
            return os.open(name, DIR_FLAGS, dir_fd=dir_fd), final, fresh
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                self._fail_file(rel, exc.strerror or str(exc))
                return None, name, False
        # Something that is not a directory is in the way (a file, or a symlink: never followed).
        mode = self.options.conflict
        if mode == "skip":
            self._skip()
            return None, name, False
        if mode == "copy":
            final = self._free_name(dir_fd, name)
        else:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError as exc:
                self._fail_file(rel, exc.strerror or str(exc))
                return None, name, False
        try:
            os.mkdir(final, 0o700, dir_fd=dir_fd)
            return os.open(final, DIR_FLAGS, dir_fd=dir_fd), final, True
        except OSError as exc:
            self._warn(
                KluisError("RestoreUnsafePath", path=rel, reason=exc.strerror or str(exc), target=self.target)
            )
            return None, name, False

    @staticmethod
    def _exists(dir_fd: int, name: bytes) -> bool:
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def _free_name(self, dir_fd: int, name: bytes) -> bytes:
        """``name.restored``, ``name.restored-2``, ... whichever is free (keep-both mode)."""
        for candidate in copy_names(name):
            if not self._exists(dir_fd, candidate):
                return candidate
        raise AssertionError("unreachable")

    def _apply_dir_metadata(self) -> None:
        """Set every restored directory's metadata, each after everything inside it.

        Walks the directories in the order they were entered, holding descriptors of
        the current path only, so each directory is opened once (never by path).
        """
        stack: list[tuple[int | None, Node, str, bool]] = []

        def finish() -> None:
            fd, node, rel, clean = stack.pop()
            if fd is None:
                return
            try:
                problems = apply_metadata_fd(fd, node, owner=self.owner, clean=clean)
                if problems:
                    self._fail_file(rel, "metadata: " + "; ".join(problems))
            finally:
                os.close(fd)

        try:
            for comps, node, fresh, inherits in self._dirs:
                while len(stack) >= len(comps):
                    finish()
                parent = stack[-1][0] if stack else self._root_fd
                fd: int | None = None
                if parent is not None:
                    try:
                        fd = os.open(comps[-1], DIR_FLAGS, dir_fd=parent)
                    except OSError:
                        fd = None  # replaced meanwhile: leave it alone
                rel = "/".join(os.fsdecode(c) for c in comps)
                stack.append((fd, node, rel, fresh and not inherits))
            while stack:
                finish()
        finally:
            for fd, *_ in stack:
                if fd is not None:
                    os.close(fd)

    # -- files ----------------------------------------------------------------------------

    def _write_batch(
        self,
        dir_fd: int,
        items: list[tuple[bytes, str, Node]],
        located: list[list[IndexEntry | None]],
        acl: bool,
        ticket: Ticket,
    ) -> None:
        try:
            files = written = 0
            for (name, rel, node), entries in zip(items, located, strict=True):
                n = self._write_file(dir_fd, name, rel, node, entries, acl, ticket)
                if n is not None:
                    files += 1
                    written += n
            with self._lock:
                self.progress.files += files
                self.progress.bytes += written
        finally:
            self._reader.release(ticket)
            os.close(dir_fd)

    def _create(self, dir_fd: int, name: bytes, rel: str) -> tuple[int, bytes, bytes | None] | None:
        """Open a new file for ``name``: (fd, final name, temporary name or None); None to skip."""
        try:
            return os.open(name, _NEW_FILE, 0o600, dir_fd=dir_fd), name, None
        except FileExistsError:
            pass
        except OSError as exc:
            self._fail_file(rel, exc.strerror or str(exc))
            return None
        mode = self.options.conflict
        try:
            if mode == "skip":
                self._skip()
                return None
            if mode == "copy":
                for candidate in copy_names(name):
                    try:
                        return os.open(candidate, _NEW_FILE, 0o600, dir_fd=dir_fd), candidate, None
                    except FileExistsError:
                        continue
            while True:
                tmp = self._tmp_name()
                try:
                    return os.open(tmp, _NEW_FILE, 0o600, dir_fd=dir_fd), name, tmp
                except FileExistsError:
                    continue
        except OSError as exc:
            self._fail_file(rel, exc.strerror or str(exc))
            return None

    def _write_file(
        self,
        dir_fd: int,
        name: bytes,
        rel: str,
        node: Node,
        entries: list[IndexEntry | None],
        acl: bool,
        ticket: Ticket,
    ) -> int | None:
        """Write one file; returns its byte count, or None when it was not restored."""
        created = self._create(dir_fd, name, rel)
        if created is None:
            return None
        fd, final, tmp = created
        made = tmp if tmp is not None else final
        try:
            written = self._write_content(fd, node, rel, entries, ticket)
            problems = apply_metadata_fd(fd, node, owner=self.owner, clean=not acl)
        except (KluisError, OSError) as exc:
            os.close(fd)
            try:
                os.unlink(made, dir_fd=dir_fd)
            except OSError:
                pass
            if isinstance(exc, KluisError):
                self._warn(exc)
                self._fail_file(rel, exc.message)
            else:
                self._fail_file(rel, exc.strerror or str(exc))
            return None
        os.close(fd)
        if tmp is not None:
            try:
                os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as exc:
                try:
                    os.unlink(tmp, dir_fd=dir_fd)
                except OSError:
                    pass
                self._fail_file(rel, exc.strerror or str(exc))
                return None
        if node.nlink:
            self._final[rel] = final
        if problems:
            self._fail_file(rel, "metadata: " + "; ".join(problems))
        return written

    def _write_content(
        self, fd: int, node: Node, rel: str, entries: list[IndexEntry | None], ticket: Ticket
    ) -> int:
        pos = 0
        codec = self.repo.codec()
        located = iter(entries)  # one per blob part of the content, in order
        for part in node.content or ():
            if self._should_stop():
                raise KluisError("OperationCancelled", operation="restore")
            if isinstance(part, int):
                pos += part  # a hole: leave it unallocated
                continue
            entry = next(located)
            if entry is None:
                raise KluisError("RepoBlobMissing", blob=part, where=f"/{rel}")
            data = codec.decode_view(
                entry.id,
                entry.type,
                entry.flags,
                self._reader.read(entry, ticket),
                entry.raw_length,
                pack=entry.pack.hex(),
            )
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, pos)
                pos += n
                view = view[n:]
        if pos != node.size:
            os.ftruncate(fd, node.size)
            if pos > node.size:
                raise KluisError(
                    "RepoTreeCorrupt",
                    blob="?",
                    point=self.point_id,
                    reason=f"/{rel} has more data than its size",
                )
        elif node.content and isinstance(node.content[-1], int):
            os.ftruncate(fd, node.size)  # a trailing hole needs the size set explicitly
        return pos
