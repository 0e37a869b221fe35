"""The restore's planned reads: right bytes, each byte once, nothing held after, errors kept."""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kluis.catalog import KluisError
from kluis.engine.backup import FileBackup
from kluis.engine.format import BlobType, IndexEntry, pack_name
from kluis.engine.repository import Repository
from kluis.engine.restore import Restorer
from kluis.engine.restore_plan import PlannedReader
from tests.engine.helpers import new_repo, reopen, snapshot_tree


class _CountingStore:
    """Passes reads through to a store, remembers each (pack, offset, length), can fail some."""

    remote = False

    def __init__(self, inner: Any, fail_over: int | None = None) -> None:
        self.inner = inner
        self.fail_over = fail_over  # reads longer than this raise
        self.reads: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if self.fail_over is not None and (length or 0) > self.fail_over:
            raise KluisError("StoreUnavailable", store="test", reason="a long read failed")
        data: bytes = self.inner.get(name, offset, length)
        with self.lock:
            self.reads.append((name, offset, len(data)))
        return data


def small_files_repo(tmp_path: Path, count: int = 400) -> Repository:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    for i in range(count):  # many blobs per range, and blobs of both backup threads' packs
        (src / f"f{i:04d}").write_bytes(rng.randbytes(rng.randint(1_000, 40_000)))
    repo = new_repo(tmp_path / "repo")
    FileBackup(repo).run([src])
    return reopen(repo)


def batches(entries: list[IndexEntry], size: int) -> list[list[IndexEntry]]:
    return [entries[i : i + size] for i in range(0, len(entries), size)]


def stored(repo: Repository, e: IndexEntry) -> bytes:
    return bytes(repo.store.get(pack_name(e.pack), e.offset, e.length))


def settle(reader: PlannedReader, store: _CountingStore) -> None:
    """Wait until the fetch threads stop reading (for checks of what they did on their own)."""
    seen, quiet = -1, 0
    for _ in range(200):
        now = len(store.reads)
        quiet = quiet + 1 if now == seen else 0
        if quiet >= 5:
            return
        seen = now
        time.sleep(0.02)


def test_planned_reads_give_the_stored_bytes_under_concurrency(tmp_path: Path) -> None:
    repo = small_files_repo(tmp_path)
    entries = list(repo.index.entries())
    random.Random(1).shuffle(entries)  # ranges of every shape, blobs planned twice
    plan = batches(entries + entries[:50], 17)
    reader = PlannedReader(repo.store, fetchers=2, budget=512 * 1024, max_range=256 * 1024)
    tickets = [reader.plan(b) for b in plan]
    reader.finish_planning()
    failures: list[str] = []
    work = list(zip(plan, tickets, strict=True))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                batch, ticket = work.pop(0)
            for i, e in enumerate(batch):
                if i % 7 == 3:
                    continue  # a file that failed: its planned read never happens
                if bytes(reader.read(e, ticket)) != stored(repo, e):
                    failures.append(e.id.hex())
            reader.release(ticket)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader.close()
    assert not failures
    # Every range was let go: nothing is held and no planned read is outstanding.
    assert reader.held == 0
    assert reader.ahead == 0


def test_in_plan_order_each_byte_is_read_once_in_few_large_reads(tmp_path: Path) -> None:
    repo = small_files_repo(tmp_path)
    entries = sorted(repo.index.entries(), key=lambda e: (e.pack, e.offset))
    store = _CountingStore(repo.store)
    max_range = 256 * 1024
    reader = PlannedReader(store, fetchers=1, max_range=max_range, lookahead=1 << 40)  # type: ignore[arg-type]
    tickets = [(b, reader.plan(b)) for b in batches(entries, 5)]
    reader.finish_planning()
    try:
        for batch, ticket in tickets:
            for e in batch:
                assert bytes(reader.read(e, ticket)) == stored(repo, e)
            reader.release(ticket)
    finally:
        reader.close()
    # The pack tables are never read; every blob's byte is read exactly once.
    assert sum(n for _, _, n in store.reads) == sum(e.length for e in entries)
    by_pack: dict[str, list[tuple[int, int]]] = {}
    for name, offset, n in store.reads:
        by_pack.setdefault(name, []).append((offset, n))
        assert n <= max_range
    for spans in by_pack.values():
        spans.sort()
        assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans)), "gaps or overlaps"
    # Ranges grew across batches (five blobs each) up to the limit instead of one read per batch.
    pack_bytes = {name: sum(n for _, n in spans) for name, spans in by_pack.items()}
    assert len(store.reads) <= sum(-(-b // (max_range - 40_000)) for b in pack_bytes.values())
    assert len(store.reads) <= len(tickets) // 2


def test_fetches_stay_within_the_budget_and_dropped_plans_are_not_read(tmp_path: Path) -> None:
    repo = small_files_repo(tmp_path)
    entries = sorted(repo.index.entries(), key=lambda e: (e.pack, e.offset))
    store = _CountingStore(repo.store)
    budget = 300 * 1024
    reader = PlannedReader(store, fetchers=2, budget=budget, max_range=100 * 1024)  # type: ignore[arg-type]
    plan = batches(entries, 10)
    tickets = [reader.plan(b) for b in plan]
    reader.finish_planning()
    settle(reader, store)
    # Nobody reads: the fetch threads read ahead up to the budget and stop there.
    ahead = sum(n for _, _, n in store.reads)
    assert 0 < ahead <= budget
    assert reader.held == ahead
    # The batches end without reading: everything is let go, and the rest is never fetched.
    for ticket in tickets:
        reader.release(ticket)
    settle(reader, store)
    reader.close()
    assert reader.held == 0 and reader.ahead == 0
    assert sum(n for _, _, n in store.reads) < sum(e.length for e in entries)


def test_a_failed_range_falls_back_to_the_blob_and_a_failing_blob_raises(tmp_path: Path) -> None:
    repo = small_files_repo(tmp_path, count=60)
    entries = sorted(repo.index.entries(), key=lambda e: (e.pack, e.offset))
    longest = max(e.length for e in entries)
    # Range reads (several blobs) fail, single blobs succeed: the bytes still arrive.
    store = _CountingStore(repo.store, fail_over=longest)
    reader = PlannedReader(store, fetchers=1)  # type: ignore[arg-type]
    ticket = reader.plan(entries)
    reader.finish_planning()
    try:
        for e in entries:
            assert bytes(reader.read(e, ticket)) == stored(repo, e)
    finally:
        reader.release(ticket)
        reader.close()
    assert reader.held == 0
    # Every read fails: the store's error reaches the worker (no hang, no empty bytes).
    store = _CountingStore(repo.store, fail_over=0)
    reader = PlannedReader(store, fetchers=1)  # type: ignore[arg-type]
    ticket = reader.plan(entries[:3])
    try:
        with pytest.raises(KluisError) as caught:
            reader.read(entries[0], ticket)
        assert caught.value.code == "StoreUnavailable"
    finally:
        reader.release(ticket)
        reader.close()


def test_restore_reads_each_stored_byte_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rng = random.Random(11)
    for d in range(8):
        folder = src / f"d{d}"
        folder.mkdir(parents=True)
        for f in range(60):
            (folder / f"f{f}").write_bytes(rng.randbytes(rng.choice([10, 3000, 70_000, 300_000])))
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    repo = reopen(repo)
    counting = _CountingStore(repo.store)
    repo.store = counting  # type: ignore[assignment]
    out = tmp_path / "out"
    result = Restorer(repo, point, out).run()
    assert result.status == "completed", result.warnings
    assert snapshot_tree(out / str(src).lstrip("/")) == snapshot_tree(src)
    # The walk reads trees through the repository's own reader, so what the counting store
    # saw from packs is the files' contents: each blob once (plus a tree lying between two).
    read = sum(n for name, _, n in counting.reads if name.startswith("data/"))
    content = sum(e.length for e in repo.index.entries() if e.type == BlobType.DATA)
    trees = sum(e.length for e in repo.index.entries() if e.type != BlobType.DATA)
    assert content <= read <= content + trees


def test_a_blob_read_more_often_than_planned_still_reads_right(tmp_path: Path) -> None:
    repo = small_files_repo(tmp_path, count=20)
    entries = sorted(repo.index.entries(), key=lambda e: (e.pack, e.offset))
    reader = PlannedReader(repo.store, fetchers=1)
    ticket = reader.plan(entries[:5])
    reader.finish_planning()
    try:
        for e in entries[:5]:
            assert bytes(reader.read(e, ticket)) == stored(repo, e)
        # The planned reads are used up and their range is gone: a further read goes alone.
        assert reader.held == 0
        assert bytes(reader.read(entries[2], ticket)) == stored(repo, entries[2])
        assert bytes(reader.read(entries[7], ticket)) == stored(repo, entries[7])  # never planned
    finally:
        reader.release(ticket)
        reader.close()


def test_a_blob_missing_from_the_index_fails_its_file_only(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(5000 + i))
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    repo = reopen(repo)
    missing = repo.codec().chunk_id((src / "f2").read_bytes())
    del repo.index._entries[missing]  # as if its pack had been lost from the index
    out = tmp_path / "out"
    result = Restorer(repo, point, out).run()
    codes = [w["code"] for w in result.warnings]
    assert "RepoBlobMissing" in codes
    got = out / str(src).lstrip("/")
    assert sorted(p.name for p in got.iterdir()) == ["f0", "f1", "f3", "f4"]
    for name in ("f0", "f1", "f3", "f4"):
        assert (got / name).read_bytes() == (src / name).read_bytes()
