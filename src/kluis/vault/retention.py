"""Retention: which recovery points a policy keeps, and why.

Pure functions, no database. The vault runs :func:`points_to_keep` for each protected item
and expires every point that is not in the result; garbage collection then frees the data
no kept point references.

Public API
----------

``RetentionRule`` (frozen dataclass; validation raises ``KluisError("ValidationFailed", reason=...)``)
    ``daily``            keep every point of the last N local days (today is day 1), 1-9999
    ``weekly``           keep one point per week for the last N weeks (ISO weeks, Monday first;
                         this week is week 1), 1-5163; ``weekly_weekday`` (0=Monday ... 6=Sunday,
                         default Sunday) says which day's point represents the week
    ``monthly``          one point per month for the last N months, 1-1188; the month's day is
                         either ``monthly_day`` (1-28 or ``"last"``) or ``monthly_week``
                         (``"first"``, ``"second"``, ``"third"``, ``"fourth"``, ``"last"``) with
                         ``monthly_weekday`` (0-6), e.g. the last Sunday
    ``yearly``           one point per year for the last N years, 1-99; the day is
                         ``yearly_month`` (1-12) with ``yearly_day`` or ``yearly_week`` +
                         ``yearly_weekday`` as for monthly
    ``instant_days``     how long instant recovery points (local snapshots) stay, 1-5 days
    At least one of ``daily`` and ``weekly`` must be set. ``RetentionRule.from_dict(d)`` /
    ``rule.to_dict()`` give the JSON shape for the DB.

``points_to_keep(points, rule, now_utc, timezone, retain_until=None) -> dict[str, list[str]]``
    ``points`` are ``(point id, time)`` pairs (aware datetimes). Returns every kept point id
    with its reasons, in this order: ``"newest"``, ``"daily"``, ``"weekly"``, ``"monthly"``,
    ``"yearly"``, ``"on-demand"``. Every id not in the result expires. ``retain_until`` maps
    the ids of on-demand points to their retain-until time: those points are kept until then
    (reason ``"on-demand"``) whatever the rule says, and do not stand in for the policy's
    daily/weekly/... points. The newest point of all is never expired (reason ``"newest"``),
    so an item that stopped backing up keeps at least its last point.
    Calendar buckets (day, week, month, year) are taken in the policy's ``timezone``.

    Which point represents a week (month, year): the latest point taken on the configured
    day; if that day has none (the backup failed or did not run), the latest point of the
    week (month, year). More retention never keeps fewer points: raising any count or adding
    a tier only adds ids and reasons.

``instant_points_to_keep(points, rule, now_utc) -> list[str]``
    The points younger than ``rule.instant_days`` days, newest first, at most
    ``INSTANT_POINTS_MAX`` (18): the local snapshots an agent keeps for fast restore.
``check_against_schedule(rule, schedule, *, instant_points) -> None``
    Refuses rule/schedule pairs that cannot work: a weekly schedule cannot feed daily
    retention or a weekly/monthly/yearly point on a day it does not run, and with instant
    points the runs of ``instant_days`` days must fit the 18 instant points a machine holds.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from kluis.catalog import KluisError
from kluis.vault.schedule import Schedule, load_zone, parse_weekday, weekday_names

WeekOfMonth = Literal["first", "second", "third", "fourth", "last"]
DaySpec = int | Literal["last"]

# Ranges of Azure Backup's long-term retention (the seeds do not list them): Azure
# PowerShell's RecoveryServices PolicyConstants: MaxAllowedRetentionDurationCount = 9999
# (days), ...Weekly = 5163, ...Monthly = 1188, ...Yearly = 99, and MaxAllowedDateInMonth = 28
# (a day of the month is 1-28 or "last", so every month has it).
MAX_DAILY = 9999
MAX_WEEKLY = 5163
MAX_MONTHLY = 1188
MAX_YEARLY = 99
MAX_DAY_OF_MONTH = 28
# Seeds 002 and 004 (UserErrorRpCollectionLimitReached): instant recovery points are kept
# 1-5 days, and at most 18 of them can belong to one machine at any time.
INSTANT_DAYS_RANGE = (1, 5)
INSTANT_POINTS_MAX = 18

WEEKS_OF_MONTH: tuple[str, ...] = ("first", "second", "third", "fourth", "last")
REASONS: tuple[str, ...] = ("newest", "daily", "weekly", "monthly", "yearly", "on-demand")


def _invalid(reason: str) -> KluisError:
    return KluisError("ValidationFailed", reason=reason)


def _check_count(value: object, name: str, maximum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise _invalid(f"{name} retention must be a whole number from 1 to {maximum}, got {value!r}")


def _check_weekday(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 6:
        raise _invalid(f"{name} must be 0 (Monday) to 6 (Sunday), got {value!r}")


def _check_day_spec(tier: str, count: int | None, day: object, week: object, weekday: object) -> None:
    """A tier picks its day by day-of-month or by week-of-month + weekday, exactly one."""
    if count is None:
        if day is not None or week is not None or weekday is not None:
            raise _invalid(f"{tier} day settings are given without a {tier} retention count")
        return
    if day is not None:
        if week is not None or weekday is not None:
            raise _invalid(f"{tier} retention takes a day of the month or a week and weekday, not both")
        if day != "last" and (
            isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= MAX_DAY_OF_MONTH
        ):
            raise _invalid(f"{tier} day must be 1 to {MAX_DAY_OF_MONTH} or 'last', got {day!r}")
        return
    if week is None or weekday is None:
        raise _invalid(f"{tier} retention needs a day of the month, or a week of the month and a weekday")
    if week not in WEEKS_OF_MONTH:
        raise _invalid(f"{tier} week must be one of {', '.join(WEEKS_OF_MONTH)}, got {week!r}")
    _check_weekday(weekday, f"{tier} weekday")


@dataclass(frozen=True)
class RetentionRule:
    """How many daily, weekly, monthly and yearly points a policy keeps; see the module doc."""

    daily: int | None = None
    weekly: int | None = None
    weekly_weekday: int = 6
    monthly: int | None = None
    monthly_day: DaySpec | None = None
    monthly_week: WeekOfMonth | None = None
    monthly_weekday: int | None = None
    yearly: int | None = None
    yearly_month: int = 1
    yearly_day: DaySpec | None = None
    yearly_week: WeekOfMonth | None = None
    yearly_weekday: int | None = None
    instant_days: int = 2

    def __post_init__(self) -> None:
        _check_count(self.daily, "daily", MAX_DAILY)
        _check_count(self.weekly, "weekly", MAX_WEEKLY)
        _check_count(self.monthly, "monthly", MAX_MONTHLY)
        _check_count(self.yearly, "yearly", MAX_YEARLY)
        if self.daily is None and self.weekly is None:
            raise _invalid("a retention rule needs daily or weekly retention")
        _check_weekday(self.weekly_weekday, "the weekly retention weekday")
        _check_day_spec("monthly", self.monthly, self.monthly_day, self.monthly_week, self.monthly_weekday)
        _check_day_spec("yearly", self.yearly, self.yearly_day, self.yearly_week, self.yearly_weekday)
        month = self.yearly_month
        if isinstance(month, bool) or not isinstance(month, int) or not 1 <= month <= 12:
            raise _invalid(f"the yearly retention month must be 1 to 12, got {month!r}")
        lo, hi = INSTANT_DAYS_RANGE
        days = self.instant_days
        if isinstance(days, bool) or not isinstance(days, int) or not lo <= days <= hi:
            raise _invalid(f"instant recovery points are kept {lo} to {hi} days, got {days!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetentionRule:
        """Build and validate a rule from its JSON form; weekdays may be names."""
        if not isinstance(data, Mapping):
            raise _invalid("a retention rule must be an object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise _invalid(f"unknown retention field(s): {', '.join(map(str, unknown))}")
        values = dict(data)
        for key in ("weekly_weekday", "monthly_weekday", "yearly_weekday"):
            if values.get(key) is not None:
                values[key] = parse_weekday(values[key])
        return cls(**values)


def _matches_day(day: date, spec: DaySpec | None, week: WeekOfMonth | None, weekday: int | None) -> bool:
    """Whether ``day`` is the configured day of its month."""
    last = calendar.monthrange(day.year, day.month)[1]
    if spec is not None:
        return day.day == (last if spec == "last" else spec)
    if week is None or weekday is None or day.weekday() != weekday:
        return False
    if week == "last":
        return day.day + 7 > last
    return (day.day - 1) // 7 == WEEKS_OF_MONTH.index(week)


def _pick(members: list[tuple[datetime, str, date]], preferred: set[date] | None) -> str:
    """The bucket's representative: the latest point on a preferred day, else the latest."""
    chosen = [m for m in members if m[2] in preferred] if preferred is not None else []
    return max(chosen or members)[1]


def _aware_utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a time-zone-aware datetime")
    return value.astimezone(UTC)


def _zone(timezone: str | ZoneInfo) -> ZoneInfo:
    return timezone if isinstance(timezone, ZoneInfo) else load_zone(timezone)


def points_to_keep(
    points: Sequence[tuple[str, datetime]],
    rule: RetentionRule,
    now_utc: datetime,
    timezone: str | ZoneInfo,
    retain_until: Mapping[str, datetime] | None = None,
) -> dict[str, list[str]]:
    """Kept point ids with their reasons; every other id expires. See the module docstring."""
    zone = _zone(timezone)
    now = _aware_utc(now_utc, "now_utc")
    today = now.astimezone(zone).date()
    on_demand = dict(retain_until or {})
    seen: set[str] = set()
    # (utc time, id, local date); sorting by (time, id) makes every choice deterministic.
    scheduled: list[tuple[datetime, str, date]] = []
    everything: list[tuple[datetime, str]] = []
    for point_id, when in points:
        if point_id in seen:
            raise ValueError(f"point id {point_id!r} is listed twice")
        seen.add(point_id)
        moment = _aware_utc(when, f"the time of point {point_id}")
        everything.append((moment, point_id))
        if point_id not in on_demand:
            scheduled.append((moment, point_id, moment.astimezone(zone).date()))
    reasons: dict[str, set[str]] = {}

    def keep(point_id: str, reason: str) -> None:
        reasons.setdefault(point_id, set()).add(reason)

    if everything:
        keep(max(everything)[1], "newest")

    if rule.daily is not None:
        for _, point_id, day in scheduled:
            if (today - day).days < rule.daily:
                keep(point_id, "daily")

    if rule.weekly is not None:
        this_monday = today - timedelta(days=today.weekday())
        weeks: dict[date, list[tuple[datetime, str, date]]] = {}
        for member in scheduled:
            monday = member[2] - timedelta(days=member[2].weekday())
            if (this_monday - monday).days // 7 < rule.weekly:
                weeks.setdefault(monday, []).append(member)
        for members in weeks.values():
            preferred = {m[2] for m in members if m[2].weekday() == rule.weekly_weekday}
            keep(_pick(members, preferred), "weekly")

    if rule.monthly is not None:
        this_month = today.year * 12 + today.month - 1
        months: dict[int, list[tuple[datetime, str, date]]] = {}
        for member in scheduled:
            index = member[2].year * 12 + member[2].month - 1
            if this_month - index < rule.monthly:
                months.setdefault(index, []).append(member)
        for members in months.values():
            preferred = {
                m[2]
                for m in members
                if _matches_day(m[2], rule.monthly_day, rule.monthly_week, rule.monthly_weekday)
            }
            keep(_pick(members, preferred), "monthly")

    if rule.yearly is not None:
        years: dict[int, list[tuple[datetime, str, date]]] = {}
        for member in scheduled:
            if today.year - member[2].year < rule.yearly:
                years.setdefault(member[2].year, []).append(member)
        for members in years.values():
            preferred = {
                m[2]
                for m in members
                if m[2].month == rule.yearly_month
                and _matches_day(m[2], rule.yearly_day, rule.yearly_week, rule.yearly_weekday)
            }
            keep(_pick(members, preferred), "yearly")

    for point_id, until in on_demand.items():
        if point_id in seen and now < _aware_utc(until, f"the retain-until time of {point_id}"):
            keep(point_id, "on-demand")

    return {pid: [r for r in REASONS if r in found] for pid, found in sorted(reasons.items())}


def instant_points_to_keep(
    points: Sequence[tuple[str, datetime]], rule: RetentionRule, now_utc: datetime
) -> list[str]:
    """Ids of points younger than ``rule.instant_days``, newest first, at most 18."""
    now = _aware_utc(now_utc, "now_utc")
    horizon = now - timedelta(days=rule.instant_days)
    young = sorted(
        ((_aware_utc(when, f"the time of point {pid}"), pid) for pid, when in points),
        reverse=True,
    )
    return [pid for when, pid in young if when > horizon][:INSTANT_POINTS_MAX]


def check_against_schedule(rule: RetentionRule, schedule: Schedule, *, instant_points: bool) -> None:
    """ValidationFailed when ``rule`` cannot be served by ``schedule``.

    ``instant_points`` is true for items whose backups leave local snapshots (disks).
    """
    if schedule.kind == "weekly":
        days = set(schedule.weekdays)
        names = ", ".join(weekday_names(schedule.weekdays))
        if rule.daily is not None:
            raise _invalid("a weekly schedule makes no daily points; use weekly retention instead")
        if rule.weekly_weekday not in days:
            raise _invalid(f"weekly retention keeps a day the schedule does not run (it runs {names})")
        for tier, count, weekday in (
            ("monthly", rule.monthly, rule.monthly_weekday),
            ("yearly", rule.yearly, rule.yearly_weekday),
        ):
            if count is None:
                continue
            if weekday is None:
                raise _invalid(
                    f"with a weekly schedule, {tier} retention must name a week and weekday, not a date"
                )
            if weekday not in days:
                raise _invalid(f"{tier} retention keeps a day the schedule does not run (it runs {names})")
    if instant_points:
        needed = schedule.max_runs_per_day() * rule.instant_days
        if needed > INSTANT_POINTS_MAX:
            raise _invalid(
                f"{schedule.max_runs_per_day()} backups a day kept {rule.instant_days} days need"
                f" {needed} instant recovery points; a machine holds at most {INSTANT_POINTS_MAX}"
            )


def expired(points: Sequence[tuple[str, datetime]], kept: Mapping[str, object]) -> list[str]:
    """Ids of ``points`` that are not in ``kept``, oldest first: the ones to delete."""
    return [pid for _, pid in sorted((when, pid) for pid, when in points if pid not in kept)]


__all__ = [
    "INSTANT_POINTS_MAX",
    "MAX_DAILY",
    "MAX_MONTHLY",
    "MAX_WEEKLY",
    "MAX_YEARLY",
    "REASONS",
    "RetentionRule",
    "check_against_schedule",
    "expired",
    "instant_points_to_keep",
    "points_to_keep",
]
