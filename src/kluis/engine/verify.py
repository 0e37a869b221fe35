"""Checking a repository: structure always, stored data on request.

Structural: every blob a recovery point references is indexed, every indexed pack
exists, and every directory listing decodes. Read-data: every pack (or a random
share of them) is read, checked against its name, and each blob decrypted and
re-hashed. Damage is reported as catalog errors together with the recovery points
and file paths it affects.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kluis.catalog import KluisError
from kluis.engine.format import (
    BlobType,
    decode_pack_trailer,
    object_id,
    pack_id_from_name,
    pack_name,
)
from kluis.engine.progress import Progress, ProgressCallback, Throttle
from kluis.engine.repository import Repository
from kluis.engine.trees import DIR, decode_tree
from kluis.engine.tuning import tune_allocator


@dataclass
class VerifyReport:
    """Findings of one verify run."""

    points: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    affected: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """For ``--json`` output."""
        return {**self.__dict__, "ok": self.ok}


class Verifier:
    """One verify run over a repository."""

    def __init__(
        self,
        repo: Repository,
        *,
        read_data: bool = False,
        subset_percent: float | None = None,
        threads: int | None = None,
        progress: ProgressCallback | None = None,
        seed: int | None = None,
    ) -> None:
        if subset_percent is not None and not 0 < subset_percent <= 100:  # NaN fails this too
            raise KluisError(
                "ValidationFailed",
                reason=f"the subset to read must be above 0 and at most 100 (per cent), not {subset_percent}",
            )
        self.repo = repo
        self.read_data = read_data or subset_percent is not None
        self.subset = subset_percent
        self.threads = threads or max(2, os.cpu_count() or 1)
        self.report = VerifyReport()
        self.progress = Progress(phase="Verify")
        self._report = Throttle(progress)
        self._bad: set[bytes] = set()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._disk_segments: set[bytes] = set()  # map segments already checked (shared by points)
        # Listing id -> ids of its subdirectories' listings, filled while packs are read.
        self._tree_children: dict[bytes, list[bytes]] = {}

    def _problem(self, error: KluisError, blobs: set[bytes] | None = None) -> None:
        with self._lock:
            self.report.problems.append(error.to_dict())
            if blobs:
                self._bad |= blobs

    def run(self) -> VerifyReport:
        """Check everything; never raises for damage it finds, only reports it.

        With read-data, the packs are read first, across threads; the workers also
        decode every directory listing they meet (which they decrypted and hashed
        anyway), so the structural walk afterwards needs no second read of them.
        Reference lists are checked on this thread while the workers read.
        """
        tune_allocator()  # every blob's plaintext is a fresh buffer: keep them on the heap
        self.repo.index.load(self.repo.store)
        packs = {pack_id_from_name(o.name): o.size for o in self.repo.store.list("data/")}
        reading = self._start_reading(sorted(packs.items())) if self.read_data else None
        try:
            # Runs while the workers read: an entry object per blob here held the interpreter
            # lock for about 0.4 s of a 6 s verify.
            index = self.repo.index
            gone = index.pack_ids() - packs.keys()
            for pack, ids in index.blobs_in(gone).items():
                self._problem(KluisError("RepoPackMissing", pack=pack.hex()), set(ids))
            points = self.repo.list_points()
            self.report.points = len(points)
            refs_of: dict[str, list[bytes]] = {}
            for p in points:
                try:
                    refs = self.repo.load_refs(p.id)
                except KluisError as exc:
                    self._problem(exc)
                    continue
                refs_of[p.id] = refs
                missing = set() if index.contains_all(refs) else {r for r in refs if r not in index}
                for r in sorted(missing)[:10]:
                    self._problem(KluisError("RepoBlobMissing", blob=r.hex(), where=f"recovery point {p.id}"))
                with self._lock:
                    self._bad |= missing
        finally:
            if reading is not None:
                self._finish_reading(reading)
        for p in points:
            if p.id in refs_of:
                self._check_trees(p.id)
        self._find_affected(refs_of)
        self._report(self.progress, force=True)
        return self.report

    def _check_trees(self, point_id: str) -> None:
        try:
            _header, manifest = self.repo.load_point(point_id)
        except KluisError as exc:
            self._problem(exc)
            return
        root = manifest.get("root")
        if not root:
            if manifest.get("disks"):
                from kluis.engine.disk_verify import check_disk_point

                for error, blobs in check_disk_point(self.repo, point_id, manifest, self._disk_segments):
                    self._problem(error, blobs)
            return
        stack = [bytes.fromhex(str(root))]
        seen: set[bytes] = set()
        while stack:
            tree_id = stack.pop()
            if tree_id in seen:
                continue
            seen.add(tree_id)
            children = self._tree_children.get(tree_id)
            if children is not None:
                stack.extend(children)
                continue
            # Not decoded while reading packs (no read-data, a subset, or damage): load it here.
            try:
                nodes = decode_tree(self.repo.load_blob(tree_id), blob=tree_id.hex(), point=point_id)
            except KluisError as exc:
                self._problem(exc, {tree_id})
                continue
            stack.extend(bytes.fromhex(n.subtree) for n in nodes if n.type == DIR and n.subtree)

    def _start_reading(self, packs: list[tuple[bytes, int]]) -> tuple[ThreadPoolExecutor, list[Future[None]]]:
        if self.subset is not None:
            want = max(1, round(len(packs) * self.subset / 100)) if packs else 0
            packs = self._rng.sample(packs, min(want, len(packs)))
        self.progress.total_bytes = sum(size for _, size in packs)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="kluis-verify")
        return pool, [pool.submit(self._read_pack, item) for item in packs]

    def _finish_reading(self, reading: tuple[ThreadPoolExecutor, list[Future[None]]]) -> None:
        pool, futures = reading
        try:
            for f in futures:
                f.result()
                self._report(self.progress)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _read_pack(self, item: tuple[bytes, int]) -> None:
        pack_id, size = item
        name = pack_name(pack_id)
        try:
            data = self.repo.store.get(name)
        except KluisError as exc:
            self._problem(exc)
            return
        try:
            entries = decode_pack_trailer(name, data, len(data))
        except KluisError as exc:
            # Rare: find the blobs the index places in this pack only now.
            self._problem(exc, set(self.repo.index.blobs_in({pack_id}).get(pack_id, ())))
            return
        if len(data) != size or object_id(data) != pack_id:
            self._problem(
                KluisError("RepoPackCorrupt", pack=pack_id.hex(), reason="content does not match its name")
            )
        codec = self.repo.codec()
        view = memoryview(data)
        for e in entries:
            try:
                # decode_view decrypts into the codec's reused buffer: the data is only checked.
                plain = codec.decode_view(
                    e.id,
                    e.type,
                    e.flags,
                    view[e.offset : e.offset + e.length],
                    e.raw_length,
                    pack=pack_id.hex(),
                )
            except KluisError as exc:
                self._problem(exc, {e.id})
                continue
            if e.type == BlobType.TREE:
                self._note_tree(pack_id, e.id, e.offset, plain)
        with self._lock:
            self.report.packs_read += 1
            self.report.blobs_read += len(entries)
            self.report.bytes_read += len(data)
            self.progress.bytes += len(data)

    def _note_tree(self, pack_id: bytes, tree_id: bytes, offset: int, plain: bytes | memoryview) -> None:
        """Remember the subdirectories of a listing that decoded cleanly, for the structural walk.

        Only the copy the index points to counts: that is the one restores read.
        """
        entry = self.repo.index.get(tree_id)
        if entry is None or entry.pack != pack_id or entry.offset != offset:
            return
        try:
            nodes = decode_tree(bytes(plain))
            children = [bytes.fromhex(n.subtree) for n in nodes if n.type == DIR and n.subtree]
        except (KluisError, ValueError):
            return  # the walk loads it again and reports the damage with its recovery point
        self._tree_children[tree_id] = children

    def _find_affected(self, refs_of: dict[str, list[bytes]]) -> None:
        """Name the recovery points and the files that depend on damaged blobs."""
        if not self._bad:
            return
        for point_id, refs in refs_of.items():
            if self._bad.isdisjoint(refs):
                continue
            self.report.affected[point_id] = self._paths_using(point_id)

    def _paths_using(self, point_id: str) -> list[str]:
        paths: list[str] = []
        try:
            _h, manifest = self.repo.load_point(point_id)
        except KluisError:
            return ["(the recovery point itself)"]
        if not manifest.get("root"):
            return [f"(disk {d.get('name', '?')})" for d in manifest.get("disks", [])] or ["(whole point)"]
        stack: list[tuple[str, bytes]] = [("", bytes.fromhex(str(manifest["root"])))]
        while stack and len(paths) < 1000:
            prefix, tree_id = stack.pop()
            if tree_id in self._bad:
                paths.append(f"/{prefix} (directory listing)")
                continue
            try:
                nodes = decode_tree(self.repo.load_blob(tree_id))
            except KluisError:
                paths.append(f"/{prefix} (directory listing)")
                continue
            for n in nodes:
                rel = f"{prefix}/{n.name}" if prefix else n.name
                if n.type == DIR and n.subtree:
                    stack.append((rel, bytes.fromhex(n.subtree)))
                elif any(c in self._bad for c in n.chunk_ids()):
                    paths.append(f"/{rel}")
        return sorted(paths)


def verify(
    repo: Repository,
    *,
    read_data: bool = False,
    subset_percent: float | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> VerifyReport:
    """Verify a repository (see module docstring)."""
    return Verifier(repo, read_data=read_data, subset_percent=subset_percent, progress=progress).run()


__all__ = ["Verifier", "VerifyReport", "verify"]
