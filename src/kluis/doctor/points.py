"""Restore point collections: locked, full, or holding expired instant recovery points.

Seeds 002 and 004: a lock on the restore point collection stops the clean-up of
expired points, and a collection at its limit (18) makes the next snapshot fail
(UserErrorRpCollectionLimitReached). A locked collection that already holds expired
points is RestorePointCollectionLocked; a lock that blocks nothing yet is a warning.
Expired points in an unlocked collection are a warning (InstantPointsExpired) that
``--fix`` cleans up with the collection's own ``clean_up()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kluis.agent.extensions.snapshot import CollectionLock, RestorePointCollection
from kluis.catalog import KluisError
from kluis.doctor.context import MachineContext
from kluis.doctor.framework import Check, Fix, Result, catalog_checks, failed, passed, warned


@dataclass
class _Found:
    collection: RestorePointCollection
    count: int
    expired: int
    lock: CollectionLock | None


def collections(root: Path, machine: str) -> list[RestorePointCollection]:
    """The restore point collections under ``root`` (one directory per item)."""
    try:
        dirs = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    return [
        RestorePointCollection(d.name, root, machine=machine)
        for d in dirs
        if (d / "collection.json").exists() or (d / "lock.json").exists()
    ]


def clean_expired(ctx: MachineContext) -> str:
    """Delete the expired points of every unlocked collection; what was deleted."""
    done: list[str] = []
    for col in collections(ctx.instant_points_dir, ctx.machine):
        if col.lock_info() is not None:
            continue
        deleted = col.clean_up(ctx.now)
        if deleted:
            done.append(f"{len(deleted)} from {col.item}")
    return "deleted expired instant recovery points: " + (", ".join(done) or "none were left")


def _unlock_hint(col: RestorePointCollection, lock: CollectionLock) -> str:
    return (
        f"if the lock ({lock.describe()}) is no longer needed: kluis points unlock {col.item}, then"
        f" clean up with `kluis doctor --fix` or `kluis backup now {col.item}`"
    )


def check_collections(ctx: MachineContext) -> Result:
    """Each collection: under its limit, unlocked, no expired points left behind."""
    root = ctx.instant_points_dir
    found = []
    for col in collections(root, ctx.machine):
        points = col.points()
        found.append(_Found(col, len(points), sum(1 for p in points if p.expired(ctx.now)), col.lock_info()))
    if not found:
        return passed(f"no restore point collection in {root}")
    cleanup = Fix(
        "clean-instant-points", "delete expired instant recovery points", lambda: clean_expired(ctx)
    )
    details = {
        "collections": [
            {"item": f.collection.item, "points": f.count, "expired": f.expired, "locked": f.lock is not None}
            for f in found
        ]
    }
    for f in found:
        col = f.collection
        usable = f.count if f.lock is not None else f.count - f.expired
        if usable >= col.limit:
            error = KluisError(
                "UserErrorRpCollectionLimitReached",
                machine=ctx.machine,
                count=f.count,
                limit=col.limit,
                detail=f"item {col.item}, {f.lock.describe()}" if f.lock else f"item {col.item}",
            )
            fix = (
                _unlock_hint(col, f.lock)
                if f.lock
                else f"keep fewer instant recovery points for {col.item}: one backup a day, or a shorter"
                " instant-restore retention in its policy"
            )
            return failed(error, fix, details=details)
    for f in found:
        if f.lock is not None and f.expired:
            error = KluisError(
                "RestorePointCollectionLocked",
                item=f.collection.item,
                detail=f"{f.lock.describe()}; {f.expired} expired points cannot be cleaned up",
            )
            return failed(error, _unlock_hint(f.collection, f.lock), details=details)
    for f in found:
        if f.lock is not None:
            error = KluisError(
                "RestorePointCollectionLocked", item=f.collection.item, detail=f.lock.describe()
            )
            return warned(error, _unlock_hint(f.collection, f.lock), details=details)
    stale = [f for f in found if f.expired]
    if stale:
        f = stale[0]
        error = KluisError("InstantPointsExpired", item=f.collection.item, count=f.expired)
        return warned(error, "kluis doctor --fix", auto_fix=cleanup, details=details)
    total = sum(f.count for f in found)
    return passed(
        f"{len(found)} collection(s), {total} instant recovery point(s), none expired or locked", **details
    )


CHECKS: list[Check[MachineContext]] = [
    Check(
        "restore-point-collection",
        "Restore point collections",
        check_collections,
        ("UserErrorRpCollectionLimitReached", "RestorePointCollectionLocked", "InstantPointsExpired"),
    ),
]
CATALOG_CHECKS = catalog_checks(CHECKS)
