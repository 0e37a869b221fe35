"""Restoring entries that are not regular files or folders: hard links, symbolic links,
devices and FIFOs.

:class:`SpecialEntries` is a part of :class:`kluis.engine.restore.Restorer`, as safe as
the rest: each entry is made with a call that fails rather than follows or replaces
(``symlink``, ``mkfifo``, ``mknod``, ``link`` with ``follow_symlinks=False``), and an
existing entry is replaced only by renaming a temporary one over it (:meth:`_make_at`).
"""

from __future__ import annotations

import itertools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING

from kluis.engine.metadata import apply_metadata
from kluis.engine.progress import Progress
from kluis.engine.trees import BLOCKDEV, CHARDEV, FIFO, HARDLINK, SYMLINK, Node, os_name

if TYPE_CHECKING:
    from kluis.engine.restore import RestoreOptions

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FileBatch:
    """Files of one directory handed to a worker together (fewer futures and descriptor copies)."""

    __slots__ = ("bytes", "items")

    def __init__(self) -> None:
        self.items: list[tuple[bytes, str, Node]] = []
        self.bytes = 0


class SpecialEntries:
    """Links, devices and FIFOs of a restore (see the module docstring)."""

    # Set up by Restorer.__init__ and run().
    options: RestoreOptions
    owner: bool
    progress: Progress
    _lock: threading.Lock
    _links: dict[str, tuple[list[bytes], Future[None]]]
    _final: dict[str, bytes]
    _root_fd: int

    if TYPE_CHECKING:
        # Restorer's: reporting, temporary names, and handing files to the workers.
        def _fail_file(self, rel: str, reason: str) -> None: ...

        def _skip(self) -> None: ...

        def _tmp_name(self) -> bytes: ...

        def _submit(self, dir_fd: int, batch: FileBatch, acl: bool) -> Future[None]: ...

    def _restore_special(
        self, dir_fd: int, comps: list[bytes], name: bytes, rel: str, node: Node, acl: bool
    ) -> None:
        if node.type == HARDLINK:
            linked = self._link(dir_fd, name, node, rel)
            if linked is None:
                return  # skipped
            if linked:
                with self._lock:
                    self.progress.files += 1
                return
            # The first name is not part of this restore: write the content as a file of its own.
            batch = FileBatch()
            batch.items.append((name, rel, node))
            self._submit(dir_fd, batch, acl)
            return

        def make(at: bytes) -> None:
            if node.type == SYMLINK:
                os.symlink(os_name(node.target or ""), at, dir_fd=dir_fd)
            elif node.type == FIFO:
                os.mkfifo(at, 0o600, dir_fd=dir_fd)
            elif node.type in (CHARDEV, BLOCKDEV):
                kind = stat.S_IFCHR if node.type == CHARDEV else stat.S_IFBLK
                os.mknod(at, 0o600 | kind, node.rdev or 0, dir_fd=dir_fd)

        try:
            final = self._make_at(dir_fd, name, make)
        except OSError as exc:
            self._fail_file(rel, exc.strerror or str(exc))
            return
        if final is None:
            return
        problems = apply_metadata(final, node, dir_fd, owner=self.owner)
        if problems:
            self._fail_file(rel, "metadata: " + "; ".join(problems))
        with self._lock:
            self.progress.files += 1

    def _make_at(self, dir_fd: int, name: bytes, make: Callable[[bytes], None]) -> bytes | None:
        """Create an entry with ``make`` under ``name``, by conflict mode; the name used, None if skipped.

        ``make`` must fail with FileExistsError rather than replace or follow anything.
        An overwrite creates a temporary name and renames it over the old entry.
        """
        try:
            make(name)
            return name
        except FileExistsError:
            pass
        mode = self.options.conflict
        if mode == "skip":
            self._skip()
            return None
        if mode == "copy":
            for candidate in copy_names(name):
                try:
                    make(candidate)
                    return candidate
                except FileExistsError:
                    continue
        tmp = self._tmp_name()
        make(tmp)
        try:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        return name

    def _link(self, dir_fd: int, name: bytes, node: Node, rel: str) -> bool | None:
        """Re-create a hard link to a file restored earlier in this run.

        True when linked, False when the content must be written instead, None when skipped.
        """
        first = self._links.get(node.target or "")
        if first is None:
            return False
        comps, written = first
        written.result()  # the first name must exist before it can be linked to
        first_name = self._final.get(node.target or "")
        if first_name is None:
            return False
        src_fd = self._open_path(comps)
        if src_fd is None:
            return False

        def make(at: bytes) -> None:
            os.link(first_name, at, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)

        try:
            return True if self._make_at(dir_fd, name, make) is not None else None
        except OSError:
            return False
        finally:
            os.close(src_fd)

    def _open_path(self, comps: list[bytes]) -> int | None:
        """Open a directory below the target one component at a time, never following links."""
        fd = os.dup(self._root_fd)
        for comp in comps:
            try:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except OSError:
                os.close(fd)
                return None
            os.close(fd)
            fd = nfd
        return fd


def copy_names(name: bytes) -> Iterator[bytes]:
    """Names for keep-both mode: ``name.restored``, ``name.restored-2``, ..."""
    yield name + b".restored"
    for n in itertools.count(2):
        yield name + b".restored-%d" % n
