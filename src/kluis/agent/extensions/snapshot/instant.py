"""Instant recovery points: snapshots kept on the machine for fast restores.

Each protected item has a restore point collection: a directory under the agent's
state (``/var/lib/kluis/instant-points/<item>/`` by default) holding
``collection.json`` (the kept snapshots, oldest first) and, while someone has locked
it, ``lock.json`` (who, why, since). Rules, as in the source documents:

- a snapshot is kept for the policy's instant-restore retention, 1 to 5 days;
- at most 18 per machine at any time; before a new one is kept, expired ones are
  deleted, and if 18 remain, the backup fails with UserErrorRpCollectionLimitReached;
- a lock (``kluis points lock ITEM``) stops that clean-up, so a locked, full
  collection fails the same way; its fix is to remove the lock (``kluis points
  unlock ITEM``) and then clean up, by an on-demand backup or by ``prune``.

Deleting a snapshot can be slow (a btrfs subvolume, a big reflinked image), so a
clean-up has a time budget (``DEFAULT_CLEANUP_SECONDS``): once it has run out, the
points not reached yet stay for the next clean-up and the run reports
RestorePointCleanupIncomplete (a warning) with how many are left. At least one point
is deleted per run, so a budget of 0 means "delete one, then stop".

One process at a time changes a collection (an ``flock`` on ``.mutex``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kluis.catalog import KluisError

from .providers.base import Snapshot

DEFAULT_ROOT = Path("/var/lib/kluis/instant-points")
MAX_POINTS = 18
MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 5
DAY = 86400.0
DEFAULT_CLEANUP_SECONDS = 300.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class InstantPoint:
    """A kept snapshot and when it expires."""

    snapshot: Snapshot
    created: float
    expires: float
    consistency: str
    recovery_point: str | None = None

    @property
    def id(self) -> str:
        """The snapshot's id."""
        return self.snapshot.id

    def expired(self, now: float) -> bool:
        """True once its retention has passed."""
        return now >= self.expires

    def to_dict(self) -> dict[str, Any]:
        """JSON shape."""
        return {
            "snapshot": self.snapshot.to_dict(),
            "created": self.created,
            "expires": self.expires,
            "consistency": self.consistency,
            "recovery_point": self.recovery_point,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstantPoint:
        """Rebuild from ``to_dict`` output."""
        return cls(
            Snapshot.from_dict(data["snapshot"]),
            float(data["created"]),
            float(data["expires"]),
            str(data.get("consistency", "crash")),
            data.get("recovery_point"),
        )


@dataclass(frozen=True)
class CollectionLock:
    """A lock on a restore point collection."""

    who: str
    why: str
    since: float

    def describe(self) -> str:
        """One line for messages."""
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.since))
        return f"locked by {self.who} since {when}: {self.why}"


@dataclass
class CleanUp:
    """What one clean-up did: the ids deleted and how many it did not reach in time."""

    item: str
    deleted: list[str] = field(default_factory=list)
    remaining: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True unless the time budget ran out with points still to delete."""
        return self.remaining == 0

    def warning(self) -> KluisError | None:
        """RestorePointCleanupIncomplete when the budget ran out, else None."""
        if self.complete:
            return None
        return KluisError(
            "RestorePointCleanupIncomplete",
            item=self.item,
            remaining=self.remaining,
            detail=f"{len(self.deleted)} deleted in {self.seconds:.1f} s",
        )


def check_retention(days: int) -> int:
    """Refuse an instant-restore retention outside 1 to 5 days."""
    if (
        isinstance(days, bool)
        or not isinstance(days, int)
        or not MIN_RETENTION_DAYS <= days <= MAX_RETENTION_DAYS
    ):
        raise KluisError(
            "ValidationFailed",
            reason=f"instant recovery points are kept {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS} days,"
            f" not {days!r}",
        )
    return days


class RestorePointCollection:
    """The instant recovery points of one item (one machine)."""

    def __init__(
        self,
        item: str,
        root: str | os.PathLike[str] = DEFAULT_ROOT,
        *,
        machine: str | None = None,
        limit: int = MAX_POINTS,
        cleanup_seconds: float = DEFAULT_CLEANUP_SECONDS,
    ) -> None:
        self.item = item
        self.machine = machine or item
        self.limit = limit
        # The time budget of a clean-up when the caller names none (``reserve`` before
        # a backup's snapshot is one such caller).
        self.cleanup_seconds = cleanup_seconds
        self.dir = Path(root) / _SAFE_NAME.sub("_", item)
        self._file = self.dir / "collection.json"
        self._lock_file = self.dir / "lock.json"
        # The last clean-up this object ran (``reserve`` included): the disk backup reads
        # it after ``take_snapshot`` to report an unfinished one as a warning.
        self.last_cleanup: CleanUp | None = None

    # -- storage ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[None]:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.dir / ".mutex", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> list[InstantPoint]:
        try:
            data = json.loads(self._file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        return [InstantPoint.from_dict(p) for p in data.get("points", [])]

    def _write(self, points: list[InstantPoint]) -> None:
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"item": self.item, "points": [p.to_dict() for p in points]}, indent=1))
        os.replace(tmp, self._file)

    # -- reading ------------------------------------------------------------------------

    def points(self) -> list[InstantPoint]:
        """All kept points, oldest first."""
        with self._mutex():
            return self._read()

    def latest(self, now: float | None = None) -> InstantPoint | None:
        """The newest point that has not expired (the base for changed extents)."""
        now = time.time() if now is None else now
        live = [p for p in self.points() if not p.expired(now)]
        return live[-1] if live else None

    def find(self, snapshot_id: str) -> InstantPoint | None:
        """The point with this snapshot id, if kept."""
        return next((p for p in self.points() if p.id == snapshot_id), None)

    # -- lock ---------------------------------------------------------------------------

    def lock_info(self) -> CollectionLock | None:
        """The lock, when the collection is locked."""
        try:
            data = json.loads(self._lock_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            return CollectionLock("unknown", "the lock record is unreadable", self._lock_file.stat().st_mtime)
        return CollectionLock(str(data.get("who", "")), str(data.get("why", "")), float(data.get("since", 0)))

    def lock(self, who: str, why: str) -> CollectionLock:
        """Lock the collection (``kluis points lock ITEM``): clean-up stops until unlocked."""
        lock = CollectionLock(who, why, time.time())
        with self._mutex():
            tmp = self._lock_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"who": lock.who, "why": lock.why, "since": lock.since}))
            os.replace(tmp, self._lock_file)
        return lock

    def unlock(self) -> bool:
        """Remove the lock (``kluis points unlock ITEM``); False when there was none."""
        with self._mutex():
            try:
                self._lock_file.unlink()
            except FileNotFoundError:
                return False
        return True

    # -- changes ------------------------------------------------------------------------

    def _clean(
        self, points: list[InstantPoint], now: float, everything: bool, time_limit: float
    ) -> tuple[list[InstantPoint], CleanUp]:
        keep: list[InstantPoint] = []
        result = CleanUp(self.item)
        started = time.monotonic()
        tried = False
        for p in points:
            if not (everything or p.expired(now)):
                keep.append(p)
                continue
            # The clock is read before each deletion but the first: every run makes
            # progress, however small the budget.
            if tried and time.monotonic() - started >= time_limit:
                keep.append(p)
                result.remaining += 1
                continue
            tried = True
            try:
                p.snapshot.delete()
            except KluisError:
                keep.append(p)  # try again at the next clean-up
                continue
            result.deleted.append(p.id)
        result.seconds = time.monotonic() - started
        self.last_cleanup = result
        return keep, result

    def prune(
        self,
        now: float | None = None,
        *,
        everything: bool = False,
        time_limit: float | None = None,
    ) -> CleanUp:
        """Delete expired points (all with ``everything``) within ``time_limit`` seconds.

        For ``kluis points prune ITEM``; ``time_limit`` None is the collection's
        ``cleanup_seconds``. The result says what was deleted and how many points are
        left for the next run (``result.warning()``). A locked collection raises
        RestorePointCollectionLocked: the lock is there to stop exactly this.
        """
        now = time.time() if now is None else now
        with self._mutex():
            if self.lock_info() is not None:
                raise KluisError("RestorePointCollectionLocked", item=self.item)
            budget = self.cleanup_seconds if time_limit is None else time_limit
            keep, result = self._clean(self._read(), now, everything, budget)
            self._write(keep)
        return result

    def clean_up(
        self,
        now: float | None = None,
        *,
        everything: bool = False,
        time_limit: float | None = None,
    ) -> list[str]:
        """Delete expired points (all with ``everything``); the ids deleted (see ``prune``)."""
        return self.prune(now, everything=everything, time_limit=time_limit).deleted

    def reserve(self, now: float | None = None, *, time_limit: float | None = None) -> list[str]:
        """Make room for one more point before a snapshot is taken; the ids cleaned up.

        Expired points are deleted first (within ``time_limit`` seconds; an unfinished
        clean-up is left in ``last_cleanup``) unless the collection is locked; if the
        limit is still reached, UserErrorRpCollectionLimitReached.
        """
        now = time.time() if now is None else now
        self.last_cleanup = None
        with self._mutex():
            points = self._read()
            lock = self.lock_info()
            deleted: list[str] = []
            if lock is None:
                budget = self.cleanup_seconds if time_limit is None else time_limit
                points, cleaned = self._clean(points, now, False, budget)
                deleted = cleaned.deleted
                self._write(points)
            if len(points) >= self.limit:
                expired = sum(1 for p in points if p.expired(now))
                detail = None
                if lock is not None:
                    detail = (
                        f"the collection is {lock.describe()};"
                        f" {expired} expired points could not be cleaned up"
                    )
                elif self.last_cleanup is not None and not self.last_cleanup.complete:
                    detail = (
                        f"the clean-up stopped after its time limit with {expired} expired points"
                        " left; run `kluis points prune ITEM`"
                    )
                raise KluisError(
                    "UserErrorRpCollectionLimitReached",
                    machine=self.machine,
                    count=len(points),
                    limit=self.limit,
                    detail=detail,
                )
        return deleted

    def add(
        self,
        snapshot: Snapshot,
        retention_days: int,
        consistency: str,
        *,
        recovery_point: str | None = None,
        now: float | None = None,
    ) -> InstantPoint:
        """Keep ``snapshot`` for ``retention_days`` (1 to 5)."""
        check_retention(retention_days)
        now = time.time() if now is None else now
        point = InstantPoint(snapshot, now, now + retention_days * DAY, consistency, recovery_point)
        with self._mutex():
            points = self._read()
            if len(points) >= self.limit:
                raise KluisError(
                    "UserErrorRpCollectionLimitReached",
                    machine=self.machine,
                    count=len(points),
                    limit=self.limit,
                )
            points.append(point)
            self._write(points)
        return point

    def set_recovery_point(self, snapshot_id: str, recovery_point: str) -> None:
        """Link a kept snapshot to the vault's recovery point once the transfer is done."""
        with self._mutex():
            points = self._read()
            for p in points:
                if p.id == snapshot_id:
                    p.recovery_point = recovery_point
            self._write(points)

    def remove(self, snapshot_id: str) -> bool:
        """Delete one point now (its snapshot too); False when it was not kept."""
        with self._mutex():
            points = self._read()
            found = [p for p in points if p.id == snapshot_id]
            if not found:
                return False
            found[0].snapshot.delete()
            self._write([p for p in points if p.id != snapshot_id])
        return True


def lock_collection(
    item: str, who: str, why: str, root: str | os.PathLike[str] = DEFAULT_ROOT
) -> CollectionLock:
    """``kluis points lock ITEM``."""
    return RestorePointCollection(item, root).lock(who, why)


def unlock_collection(item: str, root: str | os.PathLike[str] = DEFAULT_ROOT) -> bool:
    """``kluis points unlock ITEM``."""
    return RestorePointCollection(item, root).unlock()
