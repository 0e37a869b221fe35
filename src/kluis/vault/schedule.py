"""Policy schedules: when a protected item's backups are due, in the policy's own time zone.

Pure functions, no database. The scheduler loop stores, per protected item, the
last run it handled and asks :func:`due_run` on every tick.

Public API
----------

``Schedule`` (frozen dataclass; validation raises ``KluisError("ValidationFailed", reason=...)``)
    ``kind``            ``"daily"``, ``"weekly"`` or ``"hourly"``
    ``timezone``        IANA name, e.g. ``"Europe/Amsterdam"`` (default ``"UTC"``)
    ``times``           daily/weekly: local wall-clock times (``datetime.time``, whole minutes),
                        1 to ``MAX_TIMES_PER_DAY`` (3) distinct values; stored sorted
    ``weekdays``        weekly only: 0=Monday ... 6=Sunday, at least one; stored sorted
    ``interval_hours``  hourly only: one of 4, 6, 8, 12
    ``window_start``    hourly only: local wall-clock time the window opens (whole minutes)
    ``window_hours``    hourly only: window length, ``interval_hours`` to 24. Runs are at
                        ``window_start + k * interval_hours`` (wall clock) for every k with
                        ``k * interval_hours < window_hours``: the end is exclusive, so a 24 h
                        window never runs twice at its start. A window may cross midnight;
                        its runs belong to the day the window opened.
    ``Schedule.from_dict(d)`` / ``s.to_dict()``: JSON shape with ``"HH:MM"`` strings, for the DB.
    ``s.max_runs_per_day()``: the most runs one day's schedule yields.

``next_run(schedule, after_utc) -> datetime``
    The first run strictly after ``after_utc`` (UTC-aware result).
``runs_between(schedule, start_utc, end_utc) -> list[datetime]``
    Every run ``r`` with ``start_utc < r <= end_utc``, ascending, no duplicates. Half-open,
    so consecutive ranges never count a run twice.
``previous_run(schedule, at_utc) -> datetime``
    The latest run at or before ``at_utc``.
``due_run(schedule, last_handled_utc, now_utc) -> datetime | None``
    The latest run in ``(last_handled_utc, now_utc]``, or None. After downtime, however many
    runs were missed, only the most recent is returned: missed runs are handled once, not
    replayed. The loop then records the returned run as the item's last handled run.
``spread_offset(item_id, window_seconds) -> int``
    A stable per-item delay in ``[0, window_seconds)`` (keyed on a hash of the id, identical
    in every process and release), so thousands of items on one schedule do not all start in
    the same second.

How the scheduler loop uses it (per protected item, on every tick)::

    delay = timedelta(seconds=spread_offset(item.id, SPREAD_WINDOW_SECONDS))
    run = due_run(policy.schedule, item.last_handled_run, now - delay)
    if run is not None:
        create_backup_job(item, scheduled_for=run)   # starts at run + delay <= now
        item.last_handled_run = run                  # same transaction as the job

Shifting "now" back by the item's delay makes every item see the schedule late by its own
fixed offset; because the offset is stable, a restarted loop computes the same due runs.
Keep the spread window well under the shortest gap between runs (4 h for hourly policies);
``SPREAD_WINDOW_SECONDS`` (30 minutes) does. For a new item, use the time protection was
enabled as its first ``last_handled_run`` so it does not immediately run an old slot.

Time-zone rules (zoneinfo, DST-correct):

* A wall time that does not exist (the hour skipped when clocks go forward) runs once, at
  the first valid instant after the gap. In Europe/Amsterdam a 02:30 run on the last Sunday
  of March runs at 03:00 local (01:00 UTC). Several scheduled times inside one gap collapse
  into that one run. We chose "right after the gap" over "skip the day" so a daily policy
  never silently loses a day, and over "one hour later" so a skipped 02:30 does not collide
  with a scheduled 03:30.
* A wall time that occurs twice (the hour repeated when clocks go back) runs at its first
  occurrence only. In Europe/Amsterdam a 02:30 run on the last Sunday of October runs at
  00:30 UTC, not again at 01:30 UTC.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kluis.catalog import KluisError

ScheduleKind = Literal["daily", "weekly", "hourly"]

KINDS: tuple[str, ...] = ("daily", "weekly", "hourly")
# Azure Backup's files-and-folders (MARS) agent allows at most three backups a day; the seeds
# (002/004) add that disk backups with instant recovery points are best run once a day, which
# retention.check_against_schedule enforces through the 18-instant-point limit.
MAX_TIMES_PER_DAY = 3
# Hourly policies run every 4, 6, 8 or 12 hours inside a daily window (issue #3; Azure's
# enhanced VM policy offers the same intervals).
HOURLY_INTERVALS: tuple[int, ...] = (4, 6, 8, 12)
MAX_WINDOW_HOURS = 24
SPREAD_WINDOW_SECONDS = 30 * 60

WEEKDAY_NAMES: tuple[str, ...] = (
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
)

# Every valid schedule runs at least once a week; a search this wide always finds a run,
# even around a time zone that skipped a whole calendar day.
_SEARCH_DAYS = 9


def _invalid(reason: str) -> KluisError:
    return KluisError("ValidationFailed", reason=reason)


def load_zone(name: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name; ValidationFailed when the name is unknown."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise _invalid(f"time zone {name!r} is not an IANA time zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _invalid(f"time zone {name!r} is not an IANA time zone name") from None


def _check_minute(value: object, what: str) -> time:
    if not isinstance(value, time):
        raise _invalid(f"{what} must be a time of day, got {value!r}")
    if value.tzinfo is not None:
        raise _invalid(f"{what} must be a local wall-clock time without a time zone")
    if value.second or value.microsecond:
        raise _invalid(f"{what} {value.isoformat()} must be a whole minute")
    return value


@dataclass(frozen=True)
class Schedule:
    """When a policy's backups run. See the module docstring for the fields' rules."""

    kind: ScheduleKind
    timezone: str = "UTC"
    times: tuple[time, ...] = ()
    weekdays: tuple[int, ...] = ()
    interval_hours: int | None = None
    window_start: time | None = None
    window_hours: int | None = None
    _zone: ZoneInfo = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise _invalid(f"schedule kind {self.kind!r} is not one of daily, weekly, hourly")
        object.__setattr__(self, "_zone", load_zone(self.timezone))
        # Accept any sequence but store sorted tuples, so equal schedules hash equally.
        times = tuple(_check_minute(t, "a schedule time") for t in (self.times or ()))
        weekdays = tuple(self.weekdays or ())
        for day in weekdays:
            if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= 6:
                raise _invalid(f"weekday {day!r} is not 0 (Monday) to 6 (Sunday)")
        object.__setattr__(self, "times", tuple(sorted(times)))
        object.__setattr__(self, "weekdays", tuple(sorted(weekdays)))
        if self.kind == "hourly":
            self._validate_hourly()
        else:
            self._validate_timed()

    def _validate_timed(self) -> None:
        if not self.times:
            raise _invalid(f"a {self.kind} schedule needs at least one time of day")
        if len(self.times) > MAX_TIMES_PER_DAY:
            raise _invalid(
                f"a {self.kind} schedule allows at most {MAX_TIMES_PER_DAY} times a day,"
                f" got {len(self.times)}"
            )
        if len(set(self.times)) != len(self.times):
            raise _invalid("the schedule lists the same time twice")
        if self.interval_hours is not None or self.window_start is not None or self.window_hours is not None:
            raise _invalid(f"a {self.kind} schedule takes times, not an hourly interval or window")
        if self.kind == "daily":
            if self.weekdays:
                raise _invalid("a daily schedule runs every day; use a weekly schedule to pick weekdays")
            return
        if not self.weekdays:
            raise _invalid("a weekly schedule needs at least one weekday")
        if len(set(self.weekdays)) != len(self.weekdays):
            raise _invalid("the schedule lists the same weekday twice")

    def _validate_hourly(self) -> None:
        if self.times or self.weekdays:
            raise _invalid("an hourly schedule takes an interval and a window, not times or weekdays")
        interval = self.interval_hours
        if isinstance(interval, bool) or not isinstance(interval, int) or interval not in HOURLY_INTERVALS:
            allowed = ", ".join(str(h) for h in HOURLY_INTERVALS)
            raise _invalid(f"hourly interval {interval!r} is not one of {allowed} hours")
        if self.window_start is None:
            raise _invalid("an hourly schedule needs a window start time")
        _check_minute(self.window_start, "the window start")
        wh = self.window_hours
        if isinstance(wh, bool) or not isinstance(wh, int) or not interval <= wh <= MAX_WINDOW_HOURS:
            raise _invalid(
                f"window length {wh!r} must be whole hours from the interval"
                f" ({interval}) to {MAX_WINDOW_HOURS}"
            )

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone."""
        return self._zone

    def max_runs_per_day(self) -> int:
        """The most runs one day's schedule (one window, for hourly) yields."""
        if self.kind == "hourly":
            assert self.interval_hours is not None and self.window_hours is not None
            return -(-self.window_hours // self.interval_hours)
        return len(self.times)

    def local_slots(self, day: date) -> list[datetime]:
        """The naive local wall-clock datetimes scheduled for ``day`` (before DST resolution).

        Hourly slots of a window that crosses midnight carry the next date.
        """
        if self.kind == "hourly":
            assert self.interval_hours is not None and self.window_hours is not None
            assert self.window_start is not None
            start = datetime.combine(day, self.window_start)
            return [start + timedelta(hours=h) for h in range(0, self.window_hours, self.interval_hours)]
        if self.kind == "weekly" and day.weekday() not in self.weekdays:
            return []
        return [datetime.combine(day, t) for t in self.times]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as ``"HH:MM"``); :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {"kind": self.kind, "timezone": self.timezone}
        if self.kind == "hourly":
            assert self.window_start is not None
            out["interval_hours"] = self.interval_hours
            out["window_start"] = self.window_start.strftime("%H:%M")
            out["window_hours"] = self.window_hours
        else:
            out["times"] = [t.strftime("%H:%M") for t in self.times]
            if self.kind == "weekly":
                out["weekdays"] = list(self.weekdays)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """Build and validate a schedule from its JSON form (API bodies, DB rows).

        Times are ``"HH:MM"`` strings; weekdays are 0-6 or English day names.
        """
        if not isinstance(data, Mapping):
            raise _invalid("a schedule must be an object")
        known = {"kind", "timezone", "times", "weekdays", "interval_hours", "window_start", "window_hours"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _invalid(f"unknown schedule field(s): {', '.join(map(str, unknown))}")
        times = data.get("times") or []
        weekdays = data.get("weekdays") or []
        if not isinstance(times, list) or not isinstance(weekdays, list):
            raise _invalid("schedule times and weekdays must be lists")
        window = data.get("window_start")
        return cls(
            kind=cast(ScheduleKind, data.get("kind")),
            timezone=data.get("timezone", "UTC"),
            times=tuple(parse_time(t) for t in times),
            weekdays=tuple(parse_weekday(d) for d in weekdays),
            interval_hours=data.get("interval_hours"),
            window_start=parse_time(window) if window is not None else None,
            window_hours=data.get("window_hours"),
        )


def parse_time(value: object) -> time:
    """``"HH:MM"`` to a time; ValidationFailed for anything else."""
    if isinstance(value, time):
        return value
    if isinstance(value, str) and len(value) == 5 and value[2] == ":":
        try:
            return time(int(value[:2]), int(value[3:]))
        except ValueError:
            pass
    raise _invalid(f"time {value!r} is not HH:MM")


def parse_weekday(value: object) -> int:
    """0-6 (Monday = 0) or an English day name (or its first three letters) to 0-6."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 6:
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        for i, name in enumerate(WEEKDAY_NAMES):
            if low in (name, name[:3]):
                return i
    raise _invalid(f"weekday {value!r} is not 0 (Monday) to 6 (Sunday) or a day name")


def _require_aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a time-zone-aware datetime")
    return value.astimezone(UTC)


def resolve_wall_time(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant a naive local wall-clock time runs at, by the module's DST rules.

    An existing time maps to its first occurrence; a skipped time maps to the first
    instant after the gap.
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a gap: fold=1 applies the offset from after the jump (an instant before the
    # transition), fold=0 the offset from before it (an instant after). The transition,
    # the first instant whose wall time is past ``wall``, lies between; find its second.
    other = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    lo = int(min(first, other).timestamp())  # wall time before `wall`
    hi = int(max(first, other).timestamp())  # wall time after `wall`
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) > wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


@lru_cache(maxsize=8192)
def _runs_of_day(schedule: Schedule, day: date) -> tuple[datetime, ...]:
    """UTC runs of the slots scheduled on ``day`` (cached: the loop asks the same days often)."""
    return tuple(sorted({resolve_wall_time(w, schedule.zone) for w in schedule.local_slots(day)}))


def _runs_for_days(schedule: Schedule, first: date, last: date) -> Iterable[datetime]:
    day = first
    while day <= last:
        yield from _runs_of_day(schedule, day)
        day += timedelta(days=1)


def _local_date(moment: datetime, zone: ZoneInfo) -> date:
    return moment.astimezone(zone).date()


def runs_between(schedule: Schedule, start_utc: datetime, end_utc: datetime) -> list[datetime]:
    """Every run in ``(start_utc, end_utc]``, ascending, each once, as UTC-aware datetimes."""
    start = _require_aware(start_utc, "start_utc")
    end = _require_aware(end_utc, "end_utc")
    if end <= start:
        return []
    zone = schedule.zone
    # Slots of a day can land a day earlier (hourly windows open the day before) or later
    # (a gap that skips a whole day); two days of margin on each side covers both.
    first = _local_date(start, zone) - timedelta(days=2)
    last = _local_date(end, zone) + timedelta(days=2)
    found = {r for r in _runs_for_days(schedule, first, last) if start < r <= end}
    return sorted(found)


def next_run(schedule: Schedule, after_utc: datetime) -> datetime:
    """The first run strictly after ``after_utc`` (UTC-aware)."""
    after = _require_aware(after_utc, "after_utc")
    runs = runs_between(schedule, after, after + timedelta(days=_SEARCH_DAYS))
    if not runs:  # pragma: no cover - every valid schedule runs at least weekly
        raise AssertionError(f"no run within {_SEARCH_DAYS} days of {after.isoformat()}")
    return runs[0]


def previous_run(schedule: Schedule, at_utc: datetime) -> datetime:
    """The latest run at or before ``at_utc`` (UTC-aware)."""
    at = _require_aware(at_utc, "at_utc")
    runs = runs_between(schedule, at - timedelta(days=_SEARCH_DAYS), at)
    if not runs:  # pragma: no cover - every valid schedule runs at least weekly
        raise AssertionError(f"no run within {_SEARCH_DAYS} days before {at.isoformat()}")
    return runs[-1]


def due_run(schedule: Schedule, last_handled_utc: datetime, now_utc: datetime) -> datetime | None:
    """The one run to handle now: the latest in ``(last_handled_utc, now_utc]``, else None.

    However long the vault was down, at most one run is returned, so missed runs are
    handled once and never replayed one after another.
    """
    last = _require_aware(last_handled_utc, "last_handled_utc")
    now = _require_aware(now_utc, "now_utc")
    if now <= last:
        return None
    latest = previous_run(schedule, now)
    return latest if latest > last else None


def item_delay(item_id: str | bytes, spread_seconds: int) -> timedelta:
    """How long after a due run the scheduler creates this item's job (none without a spread)."""
    return timedelta(seconds=spread_offset(item_id, spread_seconds) if spread_seconds > 0 else 0)


def spread_offset(item_id: str | bytes, window_seconds: int) -> int:
    """A stable delay in ``[0, window_seconds)`` for one item, from a hash of its id.

    BLAKE2b, not ``hash()``: the value must be the same in every process and release, or a
    restarted scheduler would compute different due runs.
    """
    if isinstance(window_seconds, bool) or not isinstance(window_seconds, int) or window_seconds < 1:
        raise ValueError("window_seconds must be a positive integer")
    raw = item_id.encode() if isinstance(item_id, str) else bytes(item_id)
    digest = hashlib.blake2b(raw, digest_size=8, person=b"kluis-spread").digest()
    return int.from_bytes(digest, "big") % window_seconds


def weekday_names(days: Sequence[int]) -> list[str]:
    """English names of weekday numbers, for messages."""
    return [WEEKDAY_NAMES[d].capitalize() for d in days]


# The source documents' rule of thumb: more than four VMs of one host taking snapshots at
# once slow each other down until their snapshot tasks time out.
MAX_STARTS_PER_HOUR = 4


def crowded_hour(starts: Iterable[tuple[datetime, str]]) -> tuple[datetime, list[str]] | None:
    """The first hour-long window in which more than ``MAX_STARTS_PER_HOUR`` items start.

    ``starts`` are (start time, item name) pairs of one host; an item counts once per
    window however often it starts in it. Returns the window's start and its items, or
    ``None`` when no window is crowded.
    """
    ordered = sorted(starts)
    hour = timedelta(hours=1)
    for i, (first, _) in enumerate(ordered):
        names: list[str] = []
        for when, name in ordered[i:]:
            if when - first >= hour:
                break
            if name not in names:
                names.append(name)
        if len(names) > MAX_STARTS_PER_HOUR:
            return first, names
    return None
