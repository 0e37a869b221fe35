"""Retention: concrete calendars, validation, and properties over random point sets."""

from __future__ import annotations

import calendar
import random
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import cast
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kluis.catalog import KluisError
from kluis.vault.retention import (
    INSTANT_POINTS_MAX,
    DaySpec,
    RetentionRule,
    WeekOfMonth,
    check_against_schedule,
    expired,
    instant_points_to_keep,
    points_to_keep,
)
from kluis.vault.schedule import Schedule

AMS = "Europe/Amsterdam"
ZONE = ZoneInfo(AMS)


def daily_points(
    first: date, last: date, at: time = time(22, 0), zone: ZoneInfo = ZONE
) -> list[tuple[str, datetime]]:
    """One point a day at local ``at``; the id is the local date."""
    out = []
    day = first
    while day <= last:
        out.append((day.isoformat(), datetime.combine(day, at, tzinfo=zone)))
        day += timedelta(days=1)
    return out


def kept_with(result: dict[str, list[str]], reason: str) -> list[str]:
    return sorted(pid for pid, reasons in result.items() if reason in reasons)


def test_concrete_calendar_all_tiers() -> None:
    points = daily_points(date(2024, 6, 1), date(2026, 6, 9))
    rule = RetentionRule(
        daily=7, weekly=4, monthly=12, monthly_day="last", yearly=2, yearly_month=1, yearly_day=1
    )
    now = datetime(2026, 6, 10, 12, tzinfo=UTC)  # Wednesday; today's 22:00 point is not taken yet
    kept = points_to_keep(points, rule, now, AMS)
    assert kept_with(kept, "daily") == [f"2026-06-0{d}" for d in range(4, 10)]
    # This week has no Sunday yet: its latest point stands in; then three past Sundays.
    assert kept_with(kept, "weekly") == ["2026-05-24", "2026-05-31", "2026-06-07", "2026-06-09"]
    assert kept_with(kept, "monthly") == sorted(
        [
            "2025-07-31",
            "2025-08-31",
            "2025-09-30",
            "2025-10-31",
            "2025-11-30",
            "2025-12-31",
            "2026-01-31",
            "2026-02-28",
            "2026-03-31",
            "2026-04-30",
            "2026-05-31",
            "2026-06-09",
        ]
    )
    assert kept_with(kept, "yearly") == ["2025-01-01", "2026-01-01"]
    assert kept_with(kept, "newest") == ["2026-06-09"]
    assert kept["2026-06-09"] == ["newest", "daily", "weekly", "monthly"]
    assert kept["2026-05-31"] == ["weekly", "monthly"]
    # 6 daily, 2 more Sundays, 10 more month ends (31 May is a Sunday too), 2 New Year's days.
    assert len(kept) == 6 + 2 + 10 + 2
    gone = expired(points, kept)
    assert gone[0] == "2024-06-01" and "2026-06-03" in gone and "2026-06-04" not in gone
    assert len(gone) + len(kept) == len(points)


def test_week_of_month_days() -> None:
    points = daily_points(date(2026, 1, 1), date(2026, 12, 31), at=time(3, 0))
    now = datetime(2027, 1, 1, 12, tzinfo=UTC)
    # January 2027 is month 1 (no points yet), so 13 months reach back to January 2026.
    first_sunday = RetentionRule(weekly=1, monthly=13, monthly_week="first", monthly_weekday=6)
    got = kept_with(points_to_keep(points, first_sunday, now, AMS), "monthly")
    assert got[:3] == ["2026-01-04", "2026-02-01", "2026-03-01"]
    assert all(date.fromisoformat(d).weekday() == 6 and date.fromisoformat(d).day <= 7 for d in got)
    last_friday = RetentionRule(weekly=1, monthly=13, monthly_week="last", monthly_weekday=4)
    got = kept_with(points_to_keep(points, last_friday, now, AMS), "monthly")
    assert got[:2] == ["2026-01-30", "2026-02-27"]
    assert "2026-07-31" in got and "2026-10-30" in got
    third_wed = RetentionRule(daily=1, monthly=3, monthly_week="third", monthly_weekday=2)
    got = kept_with(points_to_keep(points, third_wed, now, AMS), "monthly")
    assert got == ["2026-11-18", "2026-12-16"]
    yearly = RetentionRule(daily=1, yearly=5, yearly_month=3, yearly_week="last", yearly_weekday=6)
    assert kept_with(points_to_keep(points, yearly, now, AMS), "yearly") == ["2026-03-29"]


def test_buckets_follow_the_policy_time_zone() -> None:
    # 00:30 CEST on 1 April is 22:30 UTC on 31 March.
    points = [
        ("mar31", datetime(2026, 3, 31, 1, 0, tzinfo=UTC)),
        ("apr1", datetime(2026, 3, 31, 22, 30, tzinfo=UTC)),
        ("apr2", datetime(2026, 4, 2, 12, 0, tzinfo=UTC)),
    ]
    rule = RetentionRule(daily=1, monthly=2, monthly_day=1)
    now = datetime(2026, 4, 20, tzinfo=UTC)
    assert kept_with(points_to_keep(points, rule, now, AMS), "monthly") == ["apr1", "mar31"]
    # In UTC both early points fall in March; April's only point is "apr2".
    assert kept_with(points_to_keep(points, rule, now, "UTC"), "monthly") == ["apr1", "apr2"]


def test_missing_preferred_day_falls_back_to_latest_of_bucket() -> None:
    points = [p for p in daily_points(date(2026, 5, 4), date(2026, 5, 24)) if p[0] != "2026-05-17"]
    rule = RetentionRule(weekly=3, weekly_weekday=6)
    kept = points_to_keep(points, rule, datetime(2026, 5, 24, 21, tzinfo=UTC), AMS)
    # Week of 11-17 May lost its Sunday: its Saturday stands in.
    assert kept_with(kept, "weekly") == ["2026-05-10", "2026-05-16", "2026-05-24"]


def test_last_weekday_of_month_is_not_confused_with_the_one_before() -> None:
    points = [p for p in daily_points(date(2025, 10, 1), date(2025, 10, 31)) if p[0] != "2025-10-31"]
    rule = RetentionRule(daily=1, monthly=2, monthly_week="last", monthly_weekday=4)
    kept = points_to_keep(points, rule, datetime(2025, 11, 1, 12, tzinfo=UTC), AMS)
    # 31 October, the last Friday, failed; 24 October is a Friday exactly a week before the
    # month's end but not the last one, so the month's latest point stands in.
    assert kept_with(kept, "monthly") == ["2025-10-30"]


def test_several_points_on_the_preferred_day_keep_the_latest() -> None:
    day = date(2026, 5, 10)  # a Sunday
    points = [(f"p{h}", datetime.combine(day, time(h), tzinfo=ZONE)) for h in (6, 12, 18)]
    kept = points_to_keep(points, RetentionRule(weekly=1), datetime(2026, 5, 10, 20, tzinfo=UTC), AMS)
    assert kept == {"p18": ["newest", "weekly"]}
    kept = points_to_keep(points, RetentionRule(daily=1), datetime(2026, 5, 10, 20, tzinfo=UTC), AMS)
    assert kept == {"p6": ["daily"], "p12": ["daily"], "p18": ["newest", "daily"]}


def test_newest_point_is_never_expired() -> None:
    points = daily_points(date(2020, 1, 1), date(2020, 1, 10))
    kept = points_to_keep(points, RetentionRule(daily=1), datetime(2026, 1, 1, tzinfo=UTC), AMS)
    assert kept == {"2020-01-10": ["newest"]}
    assert points_to_keep([], RetentionRule(daily=1), datetime(2026, 1, 1, tzinfo=UTC), AMS) == {}


def test_on_demand_points_keep_until_their_date_and_do_not_count_for_policy() -> None:
    points = daily_points(date(2026, 5, 1), date(2026, 5, 9))
    points.append(("od-1", datetime(2026, 5, 3, 12, tzinfo=UTC)))
    points.append(("od-2", datetime(2026, 5, 10, 12, tzinfo=UTC)))
    until = {"od-1": datetime(2026, 6, 2, tzinfo=UTC), "od-2": datetime(2026, 5, 11, tzinfo=UTC)}
    now = datetime(2026, 5, 20, tzinfo=UTC)
    rule = RetentionRule(daily=3, weekly=1)
    kept = points_to_keep(points, rule, now, AMS, retain_until=until)
    assert kept["od-1"] == ["on-demand"]
    # od-2 is past its date but is the newest point of all.
    assert kept["od-2"] == ["newest"]
    assert kept_with(kept, "weekly") == []  # weekly=1 covers only this week, which has none
    # The week of 4-10 May is represented by its scheduled Saturday, not by the on-demand
    # point of Sunday 10 May; the week of 27 April-3 May by its Sunday.
    kept = points_to_keep(points, RetentionRule(weekly=4), now, AMS, retain_until=until)
    assert kept_with(kept, "weekly") == ["2026-05-03", "2026-05-09"]
    later = points_to_keep(points, rule, datetime(2026, 6, 3, tzinfo=UTC), AMS, retain_until=until)
    assert "od-1" not in later
    # An on-demand id that is not among the points is ignored.
    assert "ghost" not in points_to_keep(points, rule, now, AMS, retain_until={"ghost": until["od-1"]})


def test_input_errors() -> None:
    rule = RetentionRule(daily=1)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        points_to_keep([("a", now), ("a", now)], rule, now, AMS)
    with pytest.raises(ValueError):
        points_to_keep([("a", datetime(2026, 1, 1))], rule, now, AMS)
    with pytest.raises(KluisError) as info:
        points_to_keep([], rule, now, "Nowhere/Land")
    assert info.value.code == "ValidationFailed"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"monthly": 3, "monthly_day": 1},
        {"daily": 0},
        {"daily": 10_000},
        {"daily": True},
        {"weekly": 5164},
        {"daily": 7, "monthly": 1189, "monthly_day": 1},
        {"daily": 7, "yearly": 100, "yearly_day": 1},
        {"daily": 7, "monthly": 3},
        {"daily": 7, "monthly": 3, "monthly_day": 29},
        {"daily": 7, "monthly": 3, "monthly_day": 0},
        {"daily": 7, "monthly": 3, "monthly_day": 1, "monthly_week": "first", "monthly_weekday": 6},
        {"daily": 7, "monthly": 3, "monthly_week": "fifth", "monthly_weekday": 6},
        {"daily": 7, "monthly": 3, "monthly_week": "first"},
        {"daily": 7, "monthly_day": 1},
        {"daily": 7, "yearly": 3, "yearly_day": 1, "yearly_month": 13},
        {"daily": 7, "weekly": 2, "weekly_weekday": 7},
        {"daily": 7, "instant_days": 0},
        {"daily": 7, "instant_days": 6},
    ],
)
def test_invalid_rules_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(KluisError) as info:
        RetentionRule(**kwargs)  # type: ignore[arg-type]
    assert info.value.code == "ValidationFailed"


def test_seed_limits_are_accepted() -> None:
    rule = RetentionRule(
        daily=9999,
        weekly=5163,
        monthly=1188,
        monthly_day="last",
        yearly=99,
        yearly_month=12,
        yearly_week="last",
        yearly_weekday=6,
        instant_days=5,
    )
    assert RetentionRule.from_dict(rule.to_dict()) == rule
    named = RetentionRule.from_dict({"weekly": 4, "weekly_weekday": "saturday"})
    assert named.weekly_weekday == 5
    with pytest.raises(KluisError):
        RetentionRule.from_dict({"daily": 7, "hourly": 3})


def test_check_against_schedule() -> None:
    daily3 = Schedule("daily", AMS, times=(time(1), time(9), time(17)))
    check_against_schedule(RetentionRule(daily=30, instant_days=5), daily3, instant_points=True)
    every4 = Schedule("hourly", AMS, interval_hours=4, window_start=time(0), window_hours=24)
    check_against_schedule(RetentionRule(daily=30, instant_days=3), every4, instant_points=True)
    with pytest.raises(KluisError, match="18"):
        check_against_schedule(RetentionRule(daily=30, instant_days=4), every4, instant_points=True)
    check_against_schedule(RetentionRule(daily=30, instant_days=5), every4, instant_points=False)

    weekly = Schedule("weekly", AMS, times=(time(21),), weekdays=(2, 6))
    check_against_schedule(
        RetentionRule(weekly=12, weekly_weekday=6, monthly=6, monthly_week="first", monthly_weekday=2),
        weekly,
        instant_points=True,
    )
    for bad in (
        RetentionRule(daily=7, weekly=4),
        RetentionRule(weekly=4, weekly_weekday=0),
        RetentionRule(weekly=4, monthly=3, monthly_day=1),
        RetentionRule(weekly=4, yearly=3, yearly_week="first", yearly_weekday=1),
    ):
        with pytest.raises(KluisError) as info:
            check_against_schedule(bad, weekly, instant_points=False)
        assert info.value.code == "ValidationFailed"


def test_instant_points_by_age_and_cap() -> None:
    now = datetime(2026, 5, 10, 12, tzinfo=UTC)
    points = [(f"h{i}", now - timedelta(hours=4 * i)) for i in range(40)]
    rule = RetentionRule(daily=7, instant_days=2)
    assert instant_points_to_keep(points, rule, now) == [f"h{i}" for i in range(12)]
    rule5 = RetentionRule(daily=7, instant_days=5)
    assert instant_points_to_keep(points, rule5, now) == [f"h{i}" for i in range(INSTANT_POINTS_MAX)]


# --- properties ------------------------------------------------------------------------------

BASE = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 7, 1, 9, tzinfo=UTC)


@st.composite
def point_sets(draw: st.DrawFn) -> list[tuple[str, datetime]]:
    span = int((NOW - BASE).total_seconds() // 60) + 3 * 24 * 60  # a few in the "future"
    minutes = draw(st.lists(st.integers(0, span), min_size=0, max_size=120))
    return [(f"p{i:03d}", BASE + timedelta(minutes=m)) for i, m in enumerate(minutes)]


day_specs = st.one_of(
    st.tuples(st.one_of(st.integers(1, 28), st.just("last")), st.none(), st.none()),
    st.tuples(st.none(), st.sampled_from(["first", "second", "third", "fourth", "last"]), st.integers(0, 6)),
)


@st.composite
def rule_pairs(draw: st.DrawFn) -> tuple[RetentionRule, RetentionRule]:
    """Two rules with the same day settings where the second retains at least as much."""

    def counts(maximum: int) -> tuple[int | None, int | None]:
        small = draw(st.one_of(st.none(), st.integers(1, maximum)))
        big = draw(st.one_of(st.none(), st.integers(1, maximum))) if small is None else None
        if small is not None:
            big = draw(st.integers(small, maximum))
        return small, big

    daily, daily2 = counts(1000)
    weekly, weekly2 = counts(150)
    if daily is None and weekly is None:
        daily = daily2 = draw(st.integers(1, 60))
    monthly, monthly2 = counts(40)
    yearly, yearly2 = counts(5)
    mday, mweek, mwd = draw(day_specs)
    yday, yweek, ywd = draw(day_specs)
    common = {"weekly_weekday": draw(st.integers(0, 6)), "yearly_month": draw(st.integers(1, 12))}

    def make(d: int | None, w: int | None, m: int | None, y: int | None) -> RetentionRule:
        return RetentionRule(
            daily=d,
            weekly=w,
            monthly=m,
            monthly_day=cast(DaySpec | None, mday if m else None),
            monthly_week=cast(WeekOfMonth | None, mweek if m else None),
            monthly_weekday=mwd if m else None,
            yearly=y,
            yearly_day=cast(DaySpec | None, yday if y else None),
            yearly_week=cast(WeekOfMonth | None, yweek if y else None),
            yearly_weekday=ywd if y else None,
            **common,
        )

    return make(daily, weekly, monthly, yearly), make(daily2, weekly2, monthly2, yearly2)


zones = st.sampled_from([AMS, "UTC", "America/Los_Angeles", "Asia/Kathmandu", "Pacific/Auckland"])


@settings(max_examples=200, deadline=None)
@given(points=point_sets(), rules=rule_pairs(), zone=zones)
def test_more_retention_never_keeps_fewer(
    points: list[tuple[str, datetime]], rules: tuple[RetentionRule, RetentionRule], zone: str
) -> None:
    small, big = rules
    a = points_to_keep(points, small, NOW, zone)
    b = points_to_keep(points, big, NOW, zone)
    assert set(a) <= set(b)
    for pid, reasons in a.items():
        assert set(reasons) <= set(b[pid])


@settings(max_examples=200, deadline=None)
@given(points=point_sets(), rules=rule_pairs(), zone=zones, seed=st.integers(0, 1000))
def test_kept_points_are_justified(
    points: list[tuple[str, datetime]], rules: tuple[RetentionRule, RetentionRule], zone: str, seed: int
) -> None:
    rule = rules[1]
    tz = ZoneInfo(zone)
    kept = points_to_keep(points, rule, NOW, zone)
    shuffled = list(points)
    random.Random(seed).shuffle(shuffled)
    assert points_to_keep(shuffled, rule, NOW, zone) == kept  # order does not matter
    when = dict(points)
    assert set(kept) <= set(when)
    if points:
        newest = max((t, p) for p, t in points)[1]
        assert "newest" in kept[newest]
        assert kept_with(kept, "newest") == [newest]
    else:
        assert kept == {}
    today = NOW.astimezone(tz).date()
    local = {p: t.astimezone(tz).date() for p, t in points}
    for pid, reasons in kept.items():
        assert reasons and reasons == sorted(set(reasons), key=reasons.index)
        if "daily" in reasons:
            assert rule.daily is not None and (today - local[pid]).days < rule.daily

    def check_tier(
        reason: str, count: int | None, bucket_of: Callable[[date], object], preferred: Callable[[date], bool]
    ) -> None:
        chosen = kept_with(kept, reason)
        if count is None:
            assert chosen == []
            return
        buckets: dict[object, list[str]] = {}
        for pid, day in local.items():
            buckets.setdefault(bucket_of(day), []).append(pid)
        assert len(chosen) <= count
        assert len({bucket_of(local[p]) for p in chosen}) == len(chosen)
        for pid in chosen:
            members = buckets[bucket_of(local[pid])]
            on_day = [p for p in members if preferred(local[p])]
            pool = on_day or members
            assert pid == max(pool, key=lambda p: (when[p], p))

    check_tier(
        "weekly",
        rule.weekly,
        lambda d: d - timedelta(days=d.weekday()),
        lambda d: d.weekday() == rule.weekly_weekday,
    )
    check_tier("monthly", rule.monthly, lambda d: (d.year, d.month), lambda d: _mday(rule, d))
    check_tier(
        "yearly", rule.yearly, lambda d: d.year, lambda d: d.month == rule.yearly_month and _yday(rule, d)
    )
    # Every recent week (month, year) with a point has its representative.
    if rule.weekly:
        this_monday = today - timedelta(days=today.weekday())
        weeks = {d - timedelta(days=d.weekday()) for d in local.values()}
        recent = {w for w in weeks if (this_monday - w).days // 7 < rule.weekly}
        assert len(kept_with(kept, "weekly")) == len(recent)


def _mday(rule: RetentionRule, d: date) -> bool:
    last = calendar.monthrange(d.year, d.month)[1]
    if rule.monthly_day is not None:
        return d.day == (last if rule.monthly_day == "last" else rule.monthly_day)
    order = ["first", "second", "third", "fourth"]
    if d.weekday() != rule.monthly_weekday:
        return False
    return (
        d.day + 7 > last
        if rule.monthly_week == "last"
        else (d.day - 1) // 7 == order.index(str(rule.monthly_week))
    )


def _yday(rule: RetentionRule, d: date) -> bool:
    last = calendar.monthrange(d.year, d.month)[1]
    if rule.yearly_day is not None:
        return d.day == (last if rule.yearly_day == "last" else rule.yearly_day)
    order = ["first", "second", "third", "fourth"]
    if d.weekday() != rule.yearly_weekday:
        return False
    return (
        d.day + 7 > last
        if rule.yearly_week == "last"
        else (d.day - 1) // 7 == order.index(str(rule.yearly_week))
    )
