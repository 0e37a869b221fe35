"""Finishing folders during a file-tree backup: their listings, tree ids and checksum-store rows.

A folder is finished once every file in it is read (or found unchanged) and every
subfolder has its tree id. Three cases, cheapest first: nothing in or below it changed
(its stored tree id is reused as it is); its own entries are as recorded but a subfolder
changed (the listing is rebuilt from the checksum store's rows, reading nothing); or its
entries changed (the nodes built during the walk, with the workers' results).

:class:`FolderFinishing` is a part of :class:`kluis.engine.backup.FileBackup`: the walk
lives there, the finishing here.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import blake3

from kluis.catalog import KluisError
from kluis.engine.backup_read import FileOutcome, Pending, file_error
from kluis.engine.checksum_store import ChecksumStore, DirRow, decode_content, decode_xattrs
from kluis.engine.format import BlobType
from kluis.engine.metadata import STAT_TYPES, group_name, node_from_stat, user_name
from kluis.engine.progress import Progress
from kluis.engine.repository import Repository
from kluis.engine.trees import (
    DIR,
    FILE,
    HARDLINK,
    Node,
    encode_tree,
    fs_name,
)

_MAX_TREE_JOBS = 256
NO_TREE = bytes(32)  # a mount point left out with --one-file-system: no subtree


@dataclass(slots=True)
class DirJob:
    """A folder between being listed and having its tree id."""

    node: Node | None
    path: bytes
    # Built as the walk goes (a folder whose entries changed): nodes, files, subfolders.
    items: list[Node | Pending | DirJob] = field(default_factory=list)
    refs: list[bytes] = field(default_factory=list)
    # A folder whose entries match the checksum store: what was listed, its subfolders.
    scanned: list[os.DirEntry[bytes]] = field(default_factory=list)
    kids: list[DirJob | None] = field(default_factory=list)
    row: DirRow | None = None
    row_refs: list[bytes] = field(default_factory=list)
    # The entries' signature; None when this folder's tree must not be remembered.
    flat: bytes | None = None
    tree_id: bytes | None = None


def kids_signature(kids: list[bytes]) -> bytes:
    # Short lists are kept as they are (comparing them is cheaper than hashing); long ones hashed.
    joined = b"".join(kids)
    return joined if len(joined) <= 256 else blake3.blake3(joined).digest()


def split_ids(data: bytes) -> list[bytes]:
    return [data[i : i + 32] for i in range(0, len(data), 32)]


def hex_content(content: list[bytes | int]) -> list[str | int]:
    return [c.hex() if isinstance(c, bytes) else c for c in content]


def file_node(name: str, st: os.stat_result, xattrs: dict[str, str] | None) -> Node:
    """The node of a regular file, as :func:`node_from_stat` builds it, with known xattrs."""
    uid, gid = st.st_uid, st.st_gid
    return Node(
        name=name,
        type=FILE,
        mode=st.st_mode & 0o7777,
        uid=uid,
        gid=gid,
        user=user_name(uid),
        group=group_name(gid),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        size=st.st_size,
        xattrs=xattrs,
        nlink=st.st_nlink if st.st_nlink > 1 else None,
    )


class FolderFinishing:
    """The folder-finishing half of a file-tree backup (see the module docstring)."""

    # Set up by FileBackup.__init__ and run().
    repo: Repository
    cache: ChecksumStore | None
    progress: Progress
    files_read: int
    dirs: int
    _lock: threading.Lock
    _refs: set[bytes]
    _tree_jobs: deque[Future[None]]
    _tree_pool: ThreadPoolExecutor

    if TYPE_CHECKING:
        # FileBackup's: reporting a skipped file, and handing files to the workers.
        def _warn(self, error: KluisError, path: str) -> None: ...

        def _queue(self, item: Pending, size: int) -> None: ...

        def _settle(self, item: Pending) -> FileOutcome: ...

    def _other_node(self, job: DirJob, name: str, st: os.stat_result, ntype: str, path: bytes) -> Node | None:
        """The node of an entry that is not a regular file; None, with a warning, when it
        cannot be read (and then the folder's listing is not remembered)."""
        try:
            return node_from_stat(name, st, ntype, path)
        except OSError as exc:
            text = os.fsdecode(path)
            self._warn(file_error(exc, text), text)
            job.flat = None
            return None

    def _resolve(self, item: Pending, refs: list[bytes]) -> tuple[Node | None, bool]:
        """A read file's node (None when it failed) and whether it may be remembered."""
        outcome = self._settle(item)
        node = item.node
        if outcome.error is not None:
            if node.type != HARDLINK:  # the first name already reported it
                self._warn(outcome.error, os.fsdecode(item.path))
            return None, False
        steady = not outcome.unsteady
        if node.type != HARDLINK:
            self.progress.files += 1
            if outcome.changed:
                path = os.fsdecode(item.path)
                self._warn(KluisError("FileChangedWhileReading", path=path), path)
            st = outcome.st
            node.size = st.st_size
            node.mtime_ns = st.st_mtime_ns
            node.ctime_ns = st.st_ctime_ns
            node.xattrs = outcome.xattrs
            if self.cache is not None and steady:
                self.cache.record(
                    item.path,
                    st.st_dev,
                    st.st_ino,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    outcome.content,
                    outcome.xattrs,
                )
        node.content = hex_content(outcome.content)
        refs.extend(c for c in outcome.content if isinstance(c, bytes))
        return node, steady

    def _finish_dir(self, job: DirJob) -> None:
        if job.row is not None:
            kids = [k.tree_id if k is not None and k.tree_id else NO_TREE for k in job.kids]
            if kids_signature(kids) == job.row[1]:
                # Nothing in or below this folder changed: its stored tree is this tree.
                job.tree_id = job.row[2]
                self._refs.add(job.tree_id)
                self._refs.update(job.row_refs)
            else:
                self._rebuild(job, kids)
        else:
            self._finish_changed(job)
        # The parent keeps this job only for its tree id: drop the nodes and futures now,
        # or a whole tree's worth of them would stay in memory until the root is done.
        job.items = []
        job.kids = []
        job.scanned = []
        job.refs = []
        job.row_refs = []
        job.row = None
        self.dirs += 1

    def _finish_changed(self, job: DirJob) -> None:
        nodes: list[Node] = []
        kids: list[bytes] = []
        refs = job.refs
        for item in job.items:
            if isinstance(item, DirJob):
                assert item.tree_id is not None and item.node is not None, "directories finish children first"
                item.node.subtree = item.tree_id.hex()
                nodes.append(item.node)
                kids.append(item.tree_id)
            elif isinstance(item, Pending):
                node, steady = self._resolve(item, refs)
                if not steady:
                    job.flat = None
                if node is not None:
                    nodes.append(node)
            else:
                if item.type == DIR:
                    kids.append(NO_TREE)
                nodes.append(item)
        self._save_tree(job, nodes, kids, refs)

    def _rebuild(self, job: DirJob, kids: list[bytes]) -> None:
        """Build the tree of a folder whose entries are as recorded but a subfolder changed."""
        assert self.cache is not None
        known = self.cache.lookup_dir(job.path.rstrip(b"/"))
        nodes: list[Node] = []
        refs: list[bytes] = []
        kid_ids = iter(kids)
        index = self.repo.index
        for entry in job.scanned:
            full = entry.path
            name = fs_name(entry.name)
            st = entry.stat(follow_symlinks=False)
            ntype = STAT_TYPES[st.st_mode & 0o170000]
            if ntype == FILE:
                row = known.get(entry.name)
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                content = decode_content(row[5]) if row is not None and row[:5] == key else None
                ids = [c for c in content or () if isinstance(c, bytes)]
                if content is None or not index.contains_all(ids):
                    # The store lost this file's row: read it now (rare, so one at a time).
                    self.progress.files -= 1  # counted at listing; counted again when resolved
                    with self._lock:
                        self.progress.bytes -= st.st_size
                    pending = Pending(file_node(name, st, None), full)
                    self._queue(pending, st.st_size)
                    self.files_read += 1
                    node, steady = self._resolve(pending, refs)
                    if not steady:
                        job.flat = None
                    if node is not None:
                        nodes.append(node)
                    continue
                node = file_node(name, st, decode_xattrs(row[6]) if row is not None else None)
                node.content = hex_content(content)
                refs.extend(ids)
            else:
                kid = next(kid_ids) if ntype == DIR else None
                other = self._other_node(job, name, st, ntype, full)
                if other is None:
                    continue
                node = other
                if kid is not None and kid != NO_TREE:
                    node.subtree = kid.hex()
            nodes.append(node)
        self._save_tree(job, nodes, kids, refs)

    def _store_tree(self, nodes: list[Node]) -> bytes:
        """Encode a listing and hand its compression, encryption and packing to the tree thread."""
        data = encode_tree(nodes)
        tree_id = self.repo.codec().chunk_id(data)
        if self.repo.index.reserve(tree_id):
            jobs = self._tree_jobs
            jobs.append(self._tree_pool.submit(self._write_tree, tree_id, data))
            while jobs and (jobs[0].done() or len(jobs) > _MAX_TREE_JOBS):
                jobs.popleft().result()  # a failure in the tree thread surfaces here
        return tree_id

    def _write_tree(self, tree_id: bytes, data: bytes) -> None:
        self.repo.writer(BlobType.TREE).add(tree_id, BlobType.TREE, data)

    def _save_tree(self, job: DirJob, nodes: list[Node], kids: list[bytes], refs: list[bytes]) -> None:
        job.tree_id = tree_id = self._store_tree(nodes)
        self._refs.add(tree_id)
        self._refs.update(refs)
        if self.cache is not None and job.flat is not None:
            self.cache.record_dir(job.path, job.flat, kids_signature(kids), tree_id, b"".join(refs))
