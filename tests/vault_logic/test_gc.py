"""Garbage collection on a real LocalStore: decisions, crash safety, repair."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from kluis.catalog import KluisError
from kluis.engine.format import pack_name, pack_trailer_size
from kluis.stores import LocalStore
from kluis.vault.gc import (
    GcResult,
    apply,
    list_packs,
    load_index,
    mark,
    plan,
    read_pack_table,
    rebuild_index,
    run_gc,
)

from .gc_repo import LATER, T0, Crash, CrashingStore, Repo, check_readable

GRACE = timedelta(hours=24)


def gc(repo: Repo, **kwargs: Any) -> GcResult:
    """Run GC at LATER with the repo's recorded pack times."""
    return run_gc(repo.store, repo.prefix, repo.created, LATER, **kwargs)


@pytest.fixture()
def repo(tmp_path: Path) -> Repo:
    return Repo(LocalStore(tmp_path / "store"))


def test_mark_unions_refs_of_existing_points(repo: Repo) -> None:
    a, b, c = (repo.new_blob(10) for _ in range(3))
    repo.add_pack([a, b, c])
    repo.add_point("p1", [a])
    repo.add_point("p2", [a, b])
    repo.add_point("p3", [c])
    repo.drop_point("p3")  # expired: its refs linger
    assert mark(repo.store, repo.prefix) == {a, b}


def test_mark_refuses_a_point_without_refs(repo: Repo) -> None:
    a = repo.new_blob(10)
    repo.add_pack([a])
    repo.add_point("p1", [a])
    repo.store.delete(repo.prefix + "refs/p1")
    with pytest.raises(KluisError) as info:
        mark(repo.store, repo.prefix)
    assert info.value.code == "RecoveryPointCorrupt"


def test_dead_pack_deleted_sparse_pack_repacked_dense_pack_kept(repo: Repo) -> None:
    live1, dead1 = repo.new_blob(100), repo.new_blob(900)  # 10% live -> repack
    dead_pack = [repo.new_blob(500)]
    dense = [repo.new_blob(400), repo.new_blob(100)]  # 80% live -> keep
    sparse = repo.add_pack([live1, dead1])[0].pack
    dead = repo.add_pack(dead_pack)[0].pack
    kept = repo.add_pack(dense)[0].pack
    repo.add_point("p1", [live1, dense[0]])
    before = list_packs(repo.store, repo.prefix)
    result = gc(repo)
    after = list_packs(repo.store, repo.prefix)
    assert set(result.packs_deleted) == {sparse, dead}
    assert result.packs_rewritten == (sparse,)
    assert kept in after and sparse not in after and dead not in after
    assert len(result.new_packs) == 1 and set(result.new_packs) <= set(after)
    assert result.bytes_freed == before[sparse] + before[dead] - sum(result.new_packs.values())
    assert sum(after.values()) == sum(before.values()) - result.bytes_freed
    entries = check_readable(repo, [live1, dense[0]])
    # Dead blobs left the index, also the one whose bytes remain in the kept pack.
    assert {e.id for e in entries} == {live1, dense[0]}
    assert set(entries) == set(result.index_entries)
    assert [n for n in load_index(repo.store, repo.prefix).files] == [result.index_name]
    assert result.blobs_dropped == 3 and result.blobs_copied == 1


def test_threshold_decides_repack(repo: Repo) -> None:
    live, dead = repo.new_blob(400), repo.new_blob(600)
    pack = repo.add_pack([live, dead])[0].pack
    repo.add_point("p", [live])
    assert gc(repo, repack_threshold=0.3).packs_deleted == ()
    assert pack in list_packs(repo.store, repo.prefix)
    assert gc(repo, repack_threshold=0.5).packs_rewritten == (pack,)
    check_readable(repo, [live])


def test_pack_of_only_live_blobs_is_not_rewritten_into_itself(repo: Repo) -> None:
    tiny = [repo.new_blob(3) for _ in range(4)]  # 12 bytes of blobs, 192 bytes of table
    entries = repo.add_pack(tiny)
    pack = entries[0].pack
    repo.add_point("p", tiny)
    the_plan = plan(
        load_index(repo.store, repo.prefix).entries,
        list_packs(repo.store, repo.prefix),
        repo.created,
        mark(repo.store, repo.prefix),
        LATER,
        repack_threshold=0.9,
    )
    assert the_plan.repack_packs == frozenset() and the_plan.delete_packs == frozenset()
    # Even a plan that asks for it cannot lose the pack: the copy has the same bytes, hence
    # the same name, and apply never deletes an object it has just written.
    forced = dataclasses.replace(the_plan, repack_packs=frozenset({pack}), copy=tuple(entries), keep=())
    result = apply(repo.store, repo.prefix, forced)
    assert result.new_packs == {pack: list_packs(repo.store, repo.prefix)[pack]}
    assert result.packs_deleted == ()
    check_readable(repo, tiny)


def test_young_packs_are_untouched(repo: Repo) -> None:
    dead = repo.new_blob(300)
    live, dead2 = repo.new_blob(10), repo.new_blob(900)
    young_dead = repo.add_pack([dead], created=LATER - timedelta(hours=1))[0].pack
    young_sparse = repo.add_pack([live, dead2], created=LATER - timedelta(hours=23))[0].pack
    unrecorded = repo.add_pack([repo.new_blob(50)])[0].pack
    del repo.created[unrecorded]  # the DB never heard of it: treated as young
    repo.add_point("p", [live])
    objects = repo.objects()
    result = gc(repo)
    assert result.packs_deleted == () and result.new_packs == {}
    packs = list_packs(repo.store, repo.prefix)
    assert {young_dead, young_sparse, unrecorded} <= set(packs)
    # Young packs keep their dead blobs indexed: an interrupted backup may still use them.
    assert {dead, live, dead2} <= {e.id for e in result.index_entries}
    assert {k: v for k, v in repo.objects().items() if "/data/" in k} == {
        k: v for k, v in objects.items() if "/data/" in k
    }
    # A day later the same packs are old enough.
    later = run_gc(repo.store, repo.prefix, {p: T0 for p in packs}, LATER + timedelta(days=1))
    assert {young_dead, unrecorded} <= set(later.packs_deleted)
    assert young_sparse in later.packs_rewritten
    check_readable(repo, [live])


def test_duplicates_keep_one_copy(repo: Repo) -> None:
    shared = repo.new_blob(200)
    other1, other2 = repo.new_blob(400), repo.new_blob(400)
    pack1 = repo.add_pack([shared, other1])[0].pack
    pack2 = repo.add_pack([other2, shared])[0].pack
    repo.add_point("p", [shared, other1, other2])
    snapshot = load_index(repo.store, repo.prefix)
    the_plan = plan(
        snapshot.entries,
        list_packs(repo.store, repo.prefix),
        repo.created,
        mark(repo.store, repo.prefix),
        LATER,
    )
    assert the_plan.duplicates == {shared: tuple(sorted([pack1, pack2]))}
    result = apply(repo.store, repo.prefix, the_plan)
    entries = check_readable(repo, [shared, other1, other2])
    assert [e.id for e in entries].count(shared) == 1
    assert result.blobs_dropped == 1
    # The pack that loses its copy still has 400 of 704 bytes live: above 0.5, kept.
    assert result.packs_deleted == ()


def test_duplicate_in_young_pack_is_preferred(repo: Repo) -> None:
    shared = repo.new_blob(200)
    filler = repo.new_blob(100)
    old = repo.add_pack([shared, filler])[0].pack
    young = repo.add_pack([shared], created=LATER)[0].pack
    repo.add_point("p", [shared])
    result = gc(repo)
    assert result.packs_deleted == (old,)
    assert [e.pack for e in check_readable(repo, [shared])] == [young]


def test_repack_respects_pack_target_size(repo: Repo) -> None:
    ids = [repo.new_blob(3000) for _ in range(12)]
    deads = [repo.new_blob(9000) for _ in range(12)]
    for live, dead in zip(ids, deads, strict=True):
        repo.add_pack([live, dead])
    repo.add_point("p", ids)
    result = gc(repo, pack_target_size=10_000)
    assert len(result.packs_rewritten) == 12
    assert len(result.new_packs) == 4  # three 3000-byte blobs per pack
    assert all(size <= 10_000 for size in result.new_packs.values())
    check_readable(repo, ids)
    for pack in result.new_packs:
        assert len(read_pack_table(repo.store, repo.prefix, pack)) == 3


def test_orphan_refs_are_deleted(repo: Repo) -> None:
    a, b = repo.new_blob(10), repo.new_blob(10)
    repo.add_pack([a, b])
    repo.add_point("keep", [a])
    repo.add_point("gone", [b])
    repo.drop_point("gone")
    result = gc(repo)
    assert result.refs_deleted == ("refs/gone",)
    assert repo.store.exists(repo.prefix + "refs/keep")
    assert not repo.store.exists(repo.prefix + "refs/gone")


def test_gc_of_one_machine_leaves_another_alone(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    m1, m2 = Repo(store, "machines/m1/"), Repo(store, "machines/m2/")
    for r in (m1, m2):
        blobs = [r.new_blob(100) for _ in range(3)]
        r.add_pack(blobs)
        r.add_point("p", blobs[:1])
    m2_before = {k: v for k, v in m1.objects().items() if k.startswith("machines/m2/")}
    result = gc(m1)
    assert result.packs_rewritten
    assert {k: v for k, v in m1.objects().items() if k.startswith("machines/m2/")} == m2_before
    with pytest.raises(ValueError):
        run_gc(store, "machines/m1", {}, LATER)


def test_stale_plan_is_refused_before_any_change(repo: Repo) -> None:
    live, dead = repo.new_blob(50), repo.new_blob(950)
    pack = repo.add_pack([live, dead])[0].pack
    repo.add_point("p", [live])
    stale = plan(
        load_index(repo.store, repo.prefix).entries,
        list_packs(repo.store, repo.prefix),
        repo.created,
        mark(repo.store, repo.prefix),
        LATER,
    )
    assert stale.repack_packs == {pack}
    # A writer sneaks in: a new index file lists a blob in that pack the plan never saw.
    sneaky = repo.new_blob(1)
    entry = load_index(repo.store, repo.prefix).entries[1]
    repo.write_index([entry.__class__(sneaky, pack, 0, 0, entry.offset, entry.length, entry.raw_length)])
    before = repo.objects()
    with pytest.raises(KluisError) as info:
        apply(repo.store, repo.prefix, stale)
    assert info.value.code == "GarbageCollectionPlanStale"
    assert repo.objects() == before


def test_live_blob_known_only_to_a_pack_table_is_rescued(repo: Repo) -> None:
    a, b, lost = repo.new_blob(100), repo.new_blob(100), repo.new_blob(100)
    # The index file for this pack only lists `a` (say, the rest of it was lost).
    entries = repo.add_pack([a, b, lost], index=False)
    repo.write_index(entries[:1])
    repo.add_point("p", [lost])
    result = gc(repo)
    assert result.blobs_rescued == 1
    assert entries[0].pack in result.packs_deleted
    check_readable(repo, [lost])


def test_pack_with_unreadable_table_is_left_in_place(repo: Repo) -> None:
    live = repo.new_blob(100)
    repo.add_pack([live])
    dead = repo.add_pack([repo.new_blob(100)])[0].pack
    repo.add_point("p", [live])
    name = repo.prefix + pack_name(dead)
    data = repo.store.get(name)
    repo.store.put(name, data[:-1] + b"X")  # footer magic damaged
    result = gc(repo)
    assert dead in result.packs_left and dead not in result.packs_deleted
    assert repo.store.exists(name)
    check_readable(repo, [live])


def test_rebuild_index_from_pack_tables(repo: Repo) -> None:
    blobs = [repo.new_blob(n) for n in (1, 50, 700, 3)]
    e1 = repo.add_pack(blobs[:2])
    e2 = repo.add_pack(blobs[2:])
    broken = repo.add_pack([repo.new_blob(20)])[0].pack
    repo.store.put(repo.prefix + pack_name(broken), b"not a pack at all")
    for name in load_index(repo.store, repo.prefix).files:
        repo.store.delete(repo.prefix + name)
    rebuilt = rebuild_index(repo.store, repo.prefix)
    assert set(rebuilt.entries) == set(e1 + e2)
    assert set(rebuilt.unreadable) == {broken}
    assert load_index(repo.store, repo.prefix).files == ()
    written = rebuild_index(repo.store, repo.prefix, write=True)
    assert load_index(repo.store, repo.prefix).files == (written.index_name,)
    check_readable_after = set(load_index(repo.store, repo.prefix).entries)
    assert check_readable_after == set(e1 + e2)


def test_read_pack_table_with_a_big_table(repo: Repo) -> None:
    ids = [repo.new_blob(1) for _ in range(600)]  # table of 26 KiB: needs a second read
    entries = repo.add_pack(ids)
    table = read_pack_table(repo.store, repo.prefix, entries[0].pack)
    assert [(t.id, t.offset) for t in table] == [(e.id, e.offset) for e in entries]


def test_second_run_changes_nothing(repo: Repo) -> None:
    keep = [repo.new_blob(100) for _ in range(4)]
    for blob in keep:
        repo.add_pack([blob, repo.new_blob(400)])
    repo.add_point("p", keep)
    first = gc(repo)
    assert first.new_packs
    before = repo.objects()
    second = gc(repo)
    assert second.packs_deleted == () and second.new_packs == {} and second.blobs_dropped == 0
    assert second.index_name == first.index_name
    assert repo.objects() == before


# --- crash safety ---------------------------------------------------------------------------


def build_crash_repo(root: Path) -> tuple[Repo, set[bytes]]:
    repo = Repo(LocalStore(root))
    live: set[bytes] = set()
    shared = repo.new_blob(333)
    for i in range(5):
        blobs = [repo.new_blob(64 * (j + 1)) for j in range(4)]
        if i in (1, 3):
            blobs.append(shared)  # one blob stored twice
        repo.add_pack(blobs)
        live.update(blobs[: i % 3 + 1])
    repo.add_pack([repo.new_blob(500)], created=LATER)  # young, dead
    live.add(shared)
    repo.add_point("p1", sorted(live)[: len(live) // 2])
    repo.add_point("p2", sorted(live)[len(live) // 2 :])
    repo.add_point("old", [repo.new_blob(1)])
    repo.drop_point("old")
    return repo, live


def test_crash_at_every_step_leaves_a_readable_repository(tmp_path: Path) -> None:
    template, live = build_crash_repo(tmp_path / "template")
    # A dry run on a copy counts the puts and deletes one GC run makes.
    shutil.copytree(tmp_path / "template", tmp_path / "probe")
    counter = CrashingStore(LocalStore(tmp_path / "probe"), fail_at=0)
    run_gc(counter, template.prefix, template.created, LATER, pack_target_size=1024)
    total = counter.mutations
    assert total >= 12  # new packs, the index, old index files, old packs, refs
    for fail_at in range(1, total + 1):
        for after in (False, True):
            root = tmp_path / f"crash-{fail_at}-{after}"
            shutil.copytree(tmp_path / "template", root)
            repo = Repo(LocalStore(root), template.prefix)
            repo.blobs = template.blobs
            crashing = CrashingStore(repo.store, fail_at=fail_at, after=after)
            with pytest.raises(Crash):
                run_gc(crashing, repo.prefix, template.created, LATER, pack_target_size=1024)
            check_readable(repo, live)
            # The next run (GC-made packs are unknown to it, so young) is safe too ...
            run_gc(repo.store, repo.prefix, template.created, LATER, pack_target_size=1024)
            check_readable(repo, live)
            # ... and once everything is old, the repository converges to a clean state.
            everything_old = dict.fromkeys(list_packs(repo.store, repo.prefix), T0)
            final = run_gc(repo.store, repo.prefix, everything_old, LATER, pack_target_size=1024)
            entries = check_readable(repo, live)
            assert {e.id for e in entries} == live
            assert len(entries) == len(live)  # no duplicate copies indexed
            assert load_index(repo.store, repo.prefix).files == (final.index_name,)
            assert not any(n.startswith(repo.prefix + "refs/old") for n in repo.objects())
            again = run_gc(repo.store, repo.prefix, everything_old, LATER, pack_target_size=1024)
            assert again.packs_deleted == () and again.new_packs == {}


# --- properties over random repositories ---------------------------------------------------


@st.composite
def repo_specs(draw: st.DrawFn) -> dict[str, object]:
    n_blobs = draw(st.integers(1, 25))
    sizes = draw(st.lists(st.integers(1, 400), min_size=n_blobs, max_size=n_blobs))
    n_packs = draw(st.integers(1, 6))
    # Each blob goes to one pack, some to a second one too (duplicates).
    homes = draw(st.lists(st.integers(0, n_packs - 1), min_size=n_blobs, max_size=n_blobs))
    extra = draw(st.lists(st.tuples(st.integers(0, n_blobs - 1), st.integers(0, n_packs - 1)), max_size=4))
    young = draw(st.lists(st.booleans(), min_size=n_packs, max_size=n_packs))
    live = draw(st.sets(st.integers(0, n_blobs - 1)))
    threshold = draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))
    return {
        "sizes": sizes,
        "homes": homes,
        "extra": extra,
        "young": young,
        "live": live,
        "threshold": threshold,
        "n_packs": n_packs,
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=repo_specs())
@example(  # a repacked pack's copy is byte-identical to a dead pack: it must survive
    spec={
        "sizes": [1, 1, 1, 1],
        "homes": [1, 0, 1, 0],
        "extra": [(0, 2), (2, 0)],
        "young": [False, False, False],
        "live": {0, 1, 2, 3},
        "threshold": 0.25,
        "n_packs": 3,
    }
)
def test_random_repositories_keep_live_data_and_shed_dead_data(spec: dict[str, object]) -> None:
    sizes: list[int] = spec["sizes"]  # type: ignore[assignment]
    homes: list[int] = spec["homes"]  # type: ignore[assignment]
    extra: list[tuple[int, int]] = spec["extra"]  # type: ignore[assignment]
    young: list[bool] = spec["young"]  # type: ignore[assignment]
    live_idx: set[int] = spec["live"]  # type: ignore[assignment]
    threshold: float = spec["threshold"]  # type: ignore[assignment]
    n_packs: int = spec["n_packs"]  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Repo(LocalStore(Path(tmp) / "s"))
        ids = [repo.new_blob(size) for size in sizes]
        members: list[list[bytes]] = [[] for _ in range(n_packs)]
        for blob, home in zip(ids, homes, strict=True):
            members[home].append(blob)
        for blob_i, pack_i in extra:
            if ids[blob_i] not in members[pack_i]:
                members[pack_i].append(ids[blob_i])
        # This model's packs are plain bytes, so two packs of the same blobs in the same order
        # would be one object with two ages. A backup's packs never coincide like that (each
        # blob is encrypted with a fresh nonce), so such specs are not repositories.
        filled = [tuple(m) for m in members if m]
        assume(len(set(filled)) == len(filled))
        young_packs = set()
        for i, blobs in enumerate(members):
            if blobs:
                entries = repo.add_pack(blobs, created=LATER - timedelta(hours=1) if young[i] else T0)
                if young[i]:
                    young_packs.add(entries[0].pack)
        live = {ids[i] for i in live_idx}
        if live:
            repo.add_point("p", live)
        before = list_packs(repo.store, repo.prefix)
        young_bytes = {p: repo.store.get(repo.prefix + pack_name(p)) for p in young_packs}

        result = run_gc(repo.store, repo.prefix, repo.created, LATER, repack_threshold=threshold)

        entries = check_readable(repo, live)
        after = list_packs(repo.store, repo.prefix)
        # Young packs are byte-for-byte untouched and keep every entry.
        for pack, data in young_bytes.items():
            assert repo.store.get(repo.prefix + pack_name(pack)) == data
        assert not set(result.packs_deleted) & young_packs
        # Outside young packs: only live blobs stay indexed, each exactly once.
        old_entries = [e for e in entries if e.pack not in young_packs]
        assert all(e.id in live for e in old_entries)
        assert len({e.id for e in old_entries}) == len(old_entries)
        young_ids = {e.id for e in entries if e.pack in young_packs}
        assert not {e.id for e in old_entries} & young_ids  # a young copy makes older ones redundant
        # Old packs that survive are used at least up to the threshold, or hold nothing but
        # live blobs (rewriting those would give the same pack back).
        for pack, size in after.items():
            if pack in young_packs or pack in result.new_packs:
                continue
            mine = [e for e in entries if e.pack == pack]
            used = sum(e.length for e in mine)
            assert used > 0
            assert used / size >= threshold or used + pack_trailer_size(len(mine)) == size
        assert sum(after.values()) == sum(before.values()) - result.bytes_freed
        assert set(result.index_entries) == set(entries)
        # GC is idempotent.
        again = run_gc(repo.store, repo.prefix, repo.created, LATER, repack_threshold=threshold)
        assert again.packs_deleted == () and again.new_packs == {} and again.blobs_dropped == 0
