"""Instant recovery points: 1-5 days, at most 18 per machine, expired ones first, and locks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kluis.agent.extensions.snapshot import (
    DiskRef,
    RestorePointCollection,
    lock_collection,
    unlock_collection,
)
from kluis.agent.extensions.snapshot.instant import DAY, MAX_POINTS
from kluis.agent.extensions.snapshot.providers import ReflinkProvider, Snapshot, new_snapshot_id
from kluis.catalog import KluisError


@pytest.fixture
def image(xfs_host: Path) -> Path:
    path = xfs_host / "vm" / "root.img"
    path.parent.mkdir()
    path.write_bytes(os.urandom(256 * 1024))
    return path


def _snap(image: Path) -> Snapshot:
    return ReflinkProvider().create([DiskRef("root", str(image))], new_snapshot_id())


def test_limit_of_18_with_expired_points_cleaned_first(image: Path, tmp_path: Path) -> None:
    points = RestorePointCollection("item-1", tmp_path / "points", machine="web-01")
    t0 = 1_700_000_000.0
    # Five kept 1 day, the rest 5 days: 18 in all.
    for i in range(MAX_POINTS):
        points.reserve(now=t0 + i)
        points.add(_snap(image), 1 if i < 5 else 5, "application", now=t0 + i)
    assert len(points.points()) == MAX_POINTS

    with pytest.raises(KluisError) as exc:
        points.reserve(now=t0 + 100)  # nothing has expired yet
    err = exc.value
    assert err.code == "UserErrorRpCollectionLimitReached"
    assert err.params == {"machine": "web-01", "count": 18, "limit": 18}

    short_lived = [p.snapshot.disk("root").read_path for p in points.points()[:5]]
    cleaned = points.reserve(now=t0 + DAY + 10)  # the five 1-day points have expired
    assert len(cleaned) == 5 and len(points.points()) == 13
    assert not any(os.path.exists(p) for p in short_lived), "expired snapshots are deleted"
    latest = points.latest(now=t0 + DAY + 10)
    assert latest is not None and latest.created == t0 + MAX_POINTS - 1


def test_a_lock_blocks_clean_up_and_says_how_to_fix_it(image: Path, tmp_path: Path) -> None:
    root = tmp_path / "points"
    points = RestorePointCollection("item-2", root, machine="web-02", limit=3)
    t0 = 1_700_000_000.0
    for i in range(3):
        points.add(_snap(image), 1, "file-system", now=t0 + i)
    lock = lock_collection("item-2", who="alice", why="legal hold", root=root)
    assert points.lock_info() == lock

    with pytest.raises(KluisError) as exc:
        points.reserve(now=t0 + 2 * DAY)  # all expired, but the lock stops clean-up
    err = exc.value
    assert err.code == "UserErrorRpCollectionLimitReached"
    assert "alice" in err.message and "legal hold" in err.message
    assert "kluis points unlock" in err.actions[0]
    assert "kluis backup now" in err.actions[1] and "prune" in err.actions[2]
    with pytest.raises(KluisError) as exc:
        points.clean_up(now=t0 + 2 * DAY)
    assert exc.value.code == "RestorePointCollectionLocked"
    assert len(points.points()) == 3

    assert unlock_collection("item-2", root=root) is True
    assert unlock_collection("item-2", root=root) is False
    assert len(points.reserve(now=t0 + 2 * DAY)) == 3
    assert points.points() == []


def test_retention_is_one_to_five_days(image: Path, tmp_path: Path) -> None:
    points = RestorePointCollection("item-3", tmp_path / "points")
    snap = _snap(image)
    try:
        for days in (0, 6):
            with pytest.raises(KluisError) as exc:
                points.add(snap, days, "crash")
            assert exc.value.code == "ValidationFailed"
        point = points.add(snap, 5, "crash", recovery_point="rp-1")
        assert point.expires - point.created == 5 * DAY
        points.set_recovery_point(snap.id, "rp-2")
        found = points.find(snap.id)
        assert found is not None and found.recovery_point == "rp-2"
        assert points.remove(snap.id) and not os.path.exists(snap.disk("root").read_path)
    finally:
        snap.delete()
