"""Restoring a recovery point's files into a target directory.

Safety first: every path is walked from the target with ``openat`` and
``O_NOFOLLOW``, names are checked (no ``..``, no slash, no NUL, never empty),
and files are written under a temporary name and renamed into place, so a
damaged or forged recovery point, or a symlink swapped in while the restore
runs, can never make it write outside the target.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kluis.catalog import KluisError, Severity
from kluis.engine.metadata import apply_metadata
from kluis.engine.progress import Progress, ProgressCallback, Throttle
from kluis.engine.repository import Repository
from kluis.engine.trees import (
    BLOCKDEV,
    CHARDEV,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    SYMLINK,
    Node,
    decode_tree,
    os_name,
)
from kluis.engine.tuning import tune_allocator

CONFLICT_MODES = ("overwrite", "skip", "copy")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_IN_FLIGHT = 128


@dataclass
class RestoreOptions:
    """What to restore and how to treat what is already there."""

    include: Sequence[str] = ()
    conflict: str = "overwrite"
    owner: bool | None = None  # None: restore owners when running as root
    threads: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))


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


def safe_name(name: str) -> bool:
    """Whether a tree name can be created inside a directory without escaping it."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\x00" not in name


def _match_parts(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Component-wise glob match; ``**`` stands for any number of components."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match_parts(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match_parts(parts[1:], pattern[1:])


def _could_lead_to(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether something below the directory ``parts`` can match ``pattern``."""
    for i, comp in enumerate(parts):
        if i >= len(pattern):
            return False
        if pattern[i] == "**":
            return True
        if not fnmatch.fnmatchcase(comp, pattern[i]):
            return False
    return len(pattern) > len(parts)


class _Selection:
    """Include patterns: paths or globs relative to the point's root (``*`` stays in one component)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = [p.strip("/").split("/") for p in patterns if p.strip("/")]

    def decide(self, rel: str, is_dir: bool) -> str:
        """'all' (this and everything below), 'partial' (look inside) or 'none'."""
        if not self.patterns:
            return "all"
        parts = rel.split("/") if rel else []
        if any(_match_parts(parts, p) for p in self.patterns):
            return "all"
        if is_dir and any(_could_lead_to(parts, p) for p in self.patterns):
            return "partial"
        return "none"


class Restorer:
    """One restore of one recovery point."""

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
        self.select = _Selection(self.options.include)
        self.progress = Progress(phase="Restore")
        self._report = Throttle(progress)
        self._should_stop = should_stop or (lambda: False)
        self._lock = threading.Lock()
        self._warnings: list[dict[str, Any]] = []
        self._dirs: list[tuple[list[bytes], Node]] = []
        self._links: dict[str, tuple[list[bytes], bytes, Future[None]]] = {}
        self._futures: list[Future[None]] = []
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

    # -- the run --------------------------------------------------------------------------

    def run(self) -> RestoreResult:
        """Restore the selected part of the point into the target."""
        tune_allocator()
        started = time.monotonic()
        _header, manifest = self.repo.load_point(self.point_id)
        root_id = bytes.fromhex(str(manifest["root"]))
        try:
            os.makedirs(self.target, exist_ok=True)
            root_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise KluisError("RestoreTargetInvalid", target=self.target, reason=exc.strerror) from None
        self._root_fd = root_fd
        self._pool = ThreadPoolExecutor(self.options.threads, thread_name_prefix="kluis-restore")
        try:
            self._restore_tree(root_fd, [], "", root_id)
            for f in self._futures:
                f.result()
            self._futures.clear()
            self._pool.shutdown(wait=True)
            self._apply_dir_metadata()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
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
        self, dir_fd: int, comps: list[bytes], rel: str, tree_id: bytes, everything: bool = False
    ) -> None:
        nodes = self._load_tree(tree_id, rel)
        if nodes is None:
            return
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
            decision = "all" if everything else self.select.decide(child_rel, node.type == DIR)
            if decision == "none":
                continue
            name = os_name(node.name)
            if node.type == DIR:
                self._restore_dir(dir_fd, comps, name, child_rel, node, decision == "all")
            else:
                self._restore_leaf(dir_fd, comps, name, child_rel, node)
            self._report(self.progress)

    def _restore_dir(
        self, dir_fd: int, comps: list[bytes], name: bytes, rel: str, node: Node, everything: bool
    ) -> None:
        fd, final = self._enter_dir(dir_fd, name, rel)
        if fd is None:
            return
        try:
            self.dirs += 1
            sub = [*comps, final]
            if node.subtree:
                self._restore_tree(fd, sub, rel, bytes.fromhex(node.subtree), everything)
            self._dirs.append((sub, node))
        finally:
            os.close(fd)

    def _enter_dir(self, dir_fd: int, name: bytes, rel: str) -> tuple[int | None, bytes]:
        """Create (if needed) and open a directory without following links."""
        final = name
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            self._fail_file(rel, exc.strerror or str(exc))
            return None, name
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dir_fd), final
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                self._fail_file(rel, exc.strerror or str(exc))
                return None, name
        # Something that is not a directory is in the way (a file, or a symlink: never followed).
        mode = self.options.conflict
        if mode == "skip":
            self.skipped += 1
            return None, name
        if mode == "copy":
            final = self._free_name(dir_fd, name)
        else:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError as exc:
                self._fail_file(rel, exc.strerror or str(exc))
                return None, name
        try:
            os.mkdir(final, 0o700, dir_fd=dir_fd)
            return os.open(final, _DIR_FLAGS, dir_fd=dir_fd), final
        except OSError as exc:
            self._warn(
                KluisError("RestoreUnsafePath", path=rel, reason=exc.strerror or str(exc), target=self.target)
            )
            return None, name

    @staticmethod
    def _exists(dir_fd: int, name: bytes) -> bool:
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def _free_name(self, dir_fd: int, name: bytes) -> bytes:
        """``name.restored``, ``name.restored-2``, ... whichever is free (keep-both mode)."""
        candidate = name + b".restored"
        n = 1
        while self._exists(dir_fd, candidate):
            n += 1
            candidate = name + b".restored-%d" % n
        return candidate

    def _final_name(self, dir_fd: int, name: bytes) -> bytes | None:
        """Where a non-directory goes, by conflict mode; None to skip it."""
        if not self._exists(dir_fd, name):
            return name
        if self.options.conflict == "skip":
            self.skipped += 1
            return None
        if self.options.conflict == "copy":
            return self._free_name(dir_fd, name)
        return name

    def _restore_leaf(self, dir_fd: int, comps: list[bytes], name: bytes, rel: str, node: Node) -> None:
        final = self._final_name(dir_fd, name)
        if final is None:
            return
        if node.type == FILE or node.type == HARDLINK:
            if node.type == HARDLINK and self._link(dir_fd, final, node):
                with self._lock:
                    self.progress.files += 1
                return
            fd = os.dup(dir_fd)
            while len(self._futures) > _MAX_IN_FLIGHT:
                self._futures.pop(0).result()
            future = self._pool.submit(self._write_file, fd, comps, final, rel, node)
            self._futures.append(future)
            if node.nlink and node.type == FILE:
                self._links[rel] = (comps, final, future)
            return
        tmp = b".kluis-restore-" + secrets.token_hex(6).encode()
        try:
            if node.type == SYMLINK:
                os.symlink(os_name(node.target or ""), tmp, dir_fd=dir_fd)
            elif node.type == FIFO:
                os.mkfifo(tmp, 0o600, dir_fd=dir_fd)
            elif node.type in (CHARDEV, BLOCKDEV):
                kind = stat.S_IFCHR if node.type == CHARDEV else stat.S_IFBLK
                os.mknod(tmp, 0o600 | kind, node.rdev or 0, dir_fd=dir_fd)
            os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            self._fail_file(rel, exc.strerror or str(exc))
            return
        self._metadata(dir_fd, final, node, rel)
        with self._lock:
            self.progress.files += 1

    def _metadata(self, dir_fd: int, name: bytes, node: Node, rel: str) -> None:
        problems = apply_metadata(name, node, dir_fd, owner=self.owner)
        if problems:
            self._warn(KluisError("RestoreFileFailed", path=rel, reason="metadata: " + "; ".join(problems)))

    def _link(self, dir_fd: int, name: bytes, node: Node) -> bool:
        """Re-create a hard link to a file restored earlier in this run."""
        first = self._links.get(node.target or "")
        if first is None:
            return False
        comps, first_name, written = first
        written.result()  # the first name must exist before it can be linked to
        src_fd = self._open_path(comps)
        if src_fd is None:
            return False
        try:
            if self.options.conflict == "overwrite" and self._exists(dir_fd, name):
                os.unlink(name, dir_fd=dir_fd)
            os.link(first_name, name, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            return True
        except OSError:
            return False
        finally:
            os.close(src_fd)

    def _open_path(self, comps: list[bytes]) -> int | None:
        """Open a directory below the target one component at a time, never following links."""
        fd = os.dup(self._root_fd)
        for comp in comps:
            try:
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                os.close(fd)
                return None
            os.close(fd)
            fd = nfd
        return fd

    def _write_file(self, dir_fd: int, comps: list[bytes], name: bytes, rel: str, node: Node) -> None:
        tmp = b".kluis-restore-" + secrets.token_hex(6).encode()
        try:
            try:
                fd = os.open(
                    tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=dir_fd,
                )
            except OSError as exc:
                self._fail_file(rel, exc.strerror or str(exc))
                return
            try:
                written = self._write_content(fd, node, rel)
            except (KluisError, OSError) as exc:
                os.close(fd)
                os.unlink(tmp, dir_fd=dir_fd)
                if isinstance(exc, KluisError):
                    self._warn(exc)
                    self._fail_file(rel, exc.message)
                else:
                    self._fail_file(rel, exc.strerror or str(exc))
                return
            os.close(fd)
            try:
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as exc:
                os.unlink(tmp, dir_fd=dir_fd)
                self._fail_file(rel, exc.strerror or str(exc))
                return
            self._metadata(dir_fd, name, node, rel)
            with self._lock:
                self.progress.files += 1
                self.progress.bytes += written
        finally:
            os.close(dir_fd)

    def _write_content(self, fd: int, node: Node, rel: str) -> int:
        pos = 0
        for part in node.content or ():
            if self._should_stop():
                raise KluisError("OperationCancelled", operation="restore")
            if isinstance(part, int):
                pos += part  # a hole: leave it unallocated
                continue
            data = self.repo.load_blob_view(bytes.fromhex(part), where=f"/{rel}")
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

    def _apply_dir_metadata(self) -> None:
        # Deepest first, so setting a parent's mtime is not undone by work inside it.
        for comps, node in reversed(self._dirs):
            parent = self._open_path(comps[:-1])
            if parent is None:
                continue
            try:
                self._metadata(parent, comps[-1], node, "/".join(os.fsdecode(c) for c in comps))
            finally:
                os.close(parent)
