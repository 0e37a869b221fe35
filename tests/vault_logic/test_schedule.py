"""Policy schedules: explicit DST days, downtime, spreading, and a brute-force oracle.

The oracle walks every UTC minute of a range and decides from the zone's wall clock alone
whether a run belongs there, independently of how schedule.py resolves wall times.
"""

from __future__ import annotations

import time as clock
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kluis.catalog import KluisError
from kluis.vault.schedule import (
    Schedule,
    due_run,
    next_run,
    previous_run,
    runs_between,
    spread_offset,
)

AMS = "Europe/Amsterdam"
ZONES = sorted(available_timezones())


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def last_sunday(year: int, month: int) -> date:
    d = date(year, month + 1, 1) - timedelta(days=1)
    return d - timedelta(days=(d.weekday() - 6) % 7)


def local_day_runs(s: Schedule, day: date) -> list[datetime]:
    """Runs whose local date is ``day``."""
    start = datetime.combine(day, time(0), tzinfo=s.zone).astimezone(UTC) - timedelta(hours=30)
    runs = runs_between(s, start, start + timedelta(hours=80))
    return [r for r in runs if r.astimezone(s.zone).date() == day]


# --- explicit Europe/Amsterdam DST days ----------------------------------------------------


@pytest.mark.parametrize("year", [2026, 2027])
def test_spring_forward_0230_runs_once_at_first_instant_after_gap(year: int) -> None:
    day = last_sunday(year, 3)
    s = Schedule("daily", AMS, times=(time(2, 30),))
    runs = local_day_runs(s, day)
    # 02:00-03:00 local does not exist; the run moves to 03:00 CEST = 01:00 UTC.
    assert runs == [datetime.combine(day, time(1, 0), tzinfo=UTC)]
    assert runs[0].astimezone(s.zone).time() == time(3, 0)
    # Days around it are untouched: 02:30 CET the day before, 02:30 CEST the day after.
    assert local_day_runs(s, day - timedelta(days=1)) == [
        datetime.combine(day - timedelta(days=1), time(1, 30), tzinfo=UTC)
    ]
    assert local_day_runs(s, day + timedelta(days=1)) == [
        datetime.combine(day + timedelta(days=1), time(0, 30), tzinfo=UTC)
    ]


@pytest.mark.parametrize("year", [2026, 2027])
def test_fall_back_0230_runs_first_occurrence_only(year: int) -> None:
    day = last_sunday(year, 10)
    s = Schedule("daily", AMS, times=(time(2, 30),))
    start = datetime.combine(day, time(0), tzinfo=UTC) - timedelta(days=1)
    runs = runs_between(s, start, start + timedelta(days=2))
    on_day = [r for r in runs if r.date() == day]
    # 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET): only the first.
    assert on_day == [datetime.combine(day, time(0, 30), tzinfo=UTC)]
    assert datetime.combine(day, time(1, 30), tzinfo=UTC) not in runs


def test_dst_day_dates_are_the_expected_sundays() -> None:
    assert [last_sunday(2026, 3), last_sunday(2026, 10), last_sunday(2027, 3), last_sunday(2027, 10)] == [
        date(2026, 3, 29),
        date(2026, 10, 25),
        date(2027, 3, 28),
        date(2027, 10, 31),
    ]


def test_times_inside_one_gap_collapse_into_one_run() -> None:
    day = date(2026, 3, 29)
    s = Schedule("daily", AMS, times=(time(2, 0), time(2, 30), time(3, 0)))
    # 02:00 and 02:30 are skipped and 03:00 CEST is the first instant after the gap: one run.
    assert local_day_runs(s, day) == [utc(2026, 3, 29, 1, 0)]
    # A normal day has all three.
    assert len(local_day_runs(s, day + timedelta(days=7))) == 3


def test_next_run_across_spring_forward() -> None:
    s = Schedule("daily", AMS, times=(time(2, 30),))
    assert next_run(s, utc(2026, 3, 28, 1, 30)) == utc(2026, 3, 29, 1, 0)
    assert next_run(s, utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 30, 0, 30)
    assert previous_run(s, utc(2026, 3, 29, 0, 59)) == utc(2026, 3, 28, 1, 30)


def test_due_run_on_fall_back_day_does_not_fire_twice() -> None:
    s = Schedule("daily", AMS, times=(time(2, 30),))
    last = utc(2026, 10, 24, 12)
    first = due_run(s, last, utc(2026, 10, 25, 0, 30))
    assert first == utc(2026, 10, 25, 0, 30)
    # The repeated 02:30 CET (01:30 UTC) passes without a second run.
    assert due_run(s, first, utc(2026, 10, 25, 1, 31)) is None
    assert due_run(s, first, utc(2026, 10, 25, 23, 59)) is None


@pytest.mark.parametrize("year", [2026, 2027])
def test_hourly_every_4h_on_both_dst_days(year: int) -> None:
    s = Schedule("hourly", AMS, interval_hours=4, window_start=time(0, 0), window_hours=24)
    spring = local_day_runs(s, last_sunday(year, 3))
    assert [r.astimezone(s.zone).hour for r in spring] == [0, 4, 8, 12, 16, 20]
    fall = local_day_runs(s, last_sunday(year, 10))
    assert [r.astimezone(s.zone).hour for r in fall] == [0, 4, 8, 12, 16, 20]
    assert len(set(fall)) == 6


def test_hourly_window_crossing_midnight() -> None:
    s = Schedule("hourly", AMS, interval_hours=4, window_start=time(22, 0), window_hours=10)
    # 22:00, 02:00, 06:00 local; the 08:00 end is exclusive of nothing here.
    runs = runs_between(s, utc(2026, 6, 1, 12), utc(2026, 6, 3, 12))
    local = [r.astimezone(s.zone).replace(tzinfo=None) for r in runs]
    assert local == [
        datetime(2026, 6, 1, 22),
        datetime(2026, 6, 2, 2),
        datetime(2026, 6, 2, 6),
        datetime(2026, 6, 2, 22),
        datetime(2026, 6, 3, 2),
        datetime(2026, 6, 3, 6),
    ]


def test_hourly_window_crossing_midnight_into_spring_forward() -> None:
    s = Schedule("hourly", AMS, interval_hours=4, window_start=time(22, 0), window_hours=8)
    runs = runs_between(s, utc(2026, 3, 28, 12), utc(2026, 3, 29, 12))
    # 22:00 CET on the 28th, then 02:00 on the 29th does not exist -> 03:00 CEST.
    assert runs == [utc(2026, 3, 28, 21), utc(2026, 3, 29, 1)]


def test_hourly_window_end_is_exclusive() -> None:
    s = Schedule("hourly", "UTC", interval_hours=6, window_start=time(8, 0), window_hours=12)
    runs = runs_between(s, utc(2026, 1, 1), utc(2026, 1, 2))
    assert runs == [utc(2026, 1, 1, 8), utc(2026, 1, 1, 14)]
    full = Schedule("hourly", "UTC", interval_hours=8, window_start=time(1, 0), window_hours=24)
    assert runs_between(full, utc(2026, 1, 1), utc(2026, 1, 2)) == [
        utc(2026, 1, 1, 1),
        utc(2026, 1, 1, 9),
        utc(2026, 1, 1, 17),
    ]


def test_weekly_runs_only_on_its_local_weekdays() -> None:
    s = Schedule("weekly", "America/New_York", times=(time(21, 0), time(23, 30)), weekdays=(0, 3))
    runs = runs_between(s, utc(2026, 3, 1), utc(2026, 3, 29))  # crosses US DST (8 March)
    local = [r.astimezone(s.zone) for r in runs]
    assert all(r.weekday() in (0, 3) for r in local)
    assert all(r.time() in (time(21, 0), time(23, 30)) for r in local)
    # 23:30 New York is the next day in UTC: the weekday is the local one.
    assert any(r.weekday() != loc.weekday() for r, loc in zip(runs, local, strict=True))
    assert len(runs) == 8 * 2
    # Monday 2 March 21:00 EST is 02:00 UTC on the 3rd; after 23:30 EST the next is Thursday.
    assert next_run(s, utc(2026, 3, 3)) == utc(2026, 3, 3, 2)
    assert next_run(s, utc(2026, 3, 3, 5)) == datetime(2026, 3, 5, 21, tzinfo=s.zone).astimezone(UTC)


# --- downtime and the loop -------------------------------------------------------------------


def test_three_days_of_downtime_yield_one_run() -> None:
    s = Schedule("daily", AMS, times=(time(1, 0), time(9, 0), time(17, 0)))
    last = utc(2026, 5, 1, 15)  # 17:00 CEST on 1 May, handled
    now = utc(2026, 5, 4, 10)  # back after three days, nine runs missed
    assert len(runs_between(s, last, now)) == 8
    run = due_run(s, last, now)
    assert run == utc(2026, 5, 4, 7)  # the most recent missed run: 09:00 CEST today
    assert due_run(s, run, now) is None
    assert due_run(s, run, utc(2026, 5, 4, 15)) == utc(2026, 5, 4, 15)


def test_due_run_edges() -> None:
    s = Schedule("daily", "UTC", times=(time(12, 0),))
    assert due_run(s, utc(2026, 1, 1, 12), utc(2026, 1, 1, 12)) is None
    assert due_run(s, utc(2026, 1, 1, 11, 59), utc(2026, 1, 1, 12)) == utc(2026, 1, 1, 12)
    assert due_run(s, utc(2026, 1, 1, 12), utc(2026, 1, 1, 11)) is None
    with pytest.raises(ValueError):
        due_run(s, datetime(2026, 1, 1), utc(2026, 1, 2))


def test_simulated_loop_with_spread_handles_each_run_once() -> None:
    """A 5-minute tick loop over DST week with a 3-day outage, 40 items, per-item spread."""
    s = Schedule("daily", AMS, times=(time(2, 30), time(14, 0)))
    window = 1800
    items = [f"item-{i}" for i in range(40)]
    start = utc(2026, 10, 20)
    handled: dict[str, datetime] = {i: start for i in items}
    jobs: dict[str, list[tuple[datetime, datetime]]] = {i: [] for i in items}
    outage = (utc(2026, 10, 21, 3), utc(2026, 10, 24, 3))
    now = start
    while now < utc(2026, 10, 29):
        now += timedelta(minutes=5)
        if outage[0] <= now < outage[1]:
            continue
        for item in items:
            delay = timedelta(seconds=spread_offset(item, window))
            run = due_run(s, handled[item], now - delay)
            if run is not None:
                assert run + delay <= now
                jobs[item].append((run, now))
                handled[item] = run
    cutoff = utc(2026, 10, 29) - timedelta(seconds=window)
    expected = runs_between(s, start, cutoff)
    tick = timedelta(minutes=5)
    for item in items:
        delay = timedelta(seconds=spread_offset(item, window))
        # The runs whose first tick at or after run + delay fell inside the outage.
        missed = set()
        for r in expected:
            first_tick = start + tick * -(-(r + delay - start) // tick)
            if outage[0] <= first_tick < outage[1]:
                missed.add(r)
        assert len(missed) >= 5
        runs = [r for r, _ in jobs[item] if r <= cutoff]
        assert len(runs) == len(set(runs)), "a run was handled twice"
        # Every run outside the outage was handled; of the outage's runs only the latest.
        assert runs == sorted((set(expected) - missed) | {max(missed)})
        assert utc(2026, 10, 25, 1, 30) not in runs  # the repeated 02:30 never runs
        assert utc(2026, 10, 25, 0, 30) in runs  # the first 02:30 on the fall-back day does
    # The spread really spreads: the 40 items do not start in one tick.
    first_starts = {jobs[i][0][1] for i in items}
    assert len(first_starts) > 3


def test_loop_cost_for_ten_thousand_items_is_small() -> None:
    s = Schedule("daily", "Europe/Berlin", times=(time(22, 0),))
    now = utc(2026, 2, 3, 23)
    t0 = clock.perf_counter()
    due = 0
    for i in range(10_000):
        delay = timedelta(seconds=spread_offset(f"item-{i}", 1800))
        if due_run(s, utc(2026, 2, 2, 22), now - delay) is not None:
            due += 1
    elapsed = clock.perf_counter() - t0
    assert due == 10_000
    assert elapsed < 10, f"10,000 due checks took {elapsed:.1f} s"


# --- spread_offset ---------------------------------------------------------------------------


def test_spread_offset_is_stable_and_in_range() -> None:
    # Pinned: a change of algorithm would shift every item's start after an upgrade.
    assert spread_offset("item-1", 1800) == 1659
    assert spread_offset("item-1", 1800) == spread_offset(b"item-1", 1800)
    assert spread_offset("item-1", 1) == 0
    values = [spread_offset(f"machine-{i}/item", 3600) for i in range(20_000)]
    assert min(values) >= 0 and max(values) < 3600
    buckets = [0] * 10
    for v in values:
        buckets[v * 10 // 3600] += 1
    assert all(1700 < b < 2300 for b in buckets), buckets
    with pytest.raises(ValueError):
        spread_offset("x", 0)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "monthly", "times": (time(1),)},
        {"kind": "daily", "times": ()},
        {"kind": "daily", "times": (time(1), time(2), time(3), time(4))},
        {"kind": "daily", "times": (time(1), time(1))},
        {"kind": "daily", "times": (time(1, 0, 30),)},
        {"kind": "daily", "times": (time(1),), "weekdays": (1,)},
        {"kind": "daily", "times": (time(1),), "timezone": "Mars/Olympus"},
        {"kind": "daily", "times": (time(1),), "timezone": "../etc/passwd"},
        {"kind": "daily", "times": (time(1),), "interval_hours": 4},
        {"kind": "weekly", "times": (time(1),)},
        {"kind": "weekly", "times": (time(1),), "weekdays": (7,)},
        {"kind": "weekly", "times": (time(1),), "weekdays": (1, 1)},
        {"kind": "hourly", "interval_hours": 5, "window_start": time(1), "window_hours": 10},
        {"kind": "hourly", "interval_hours": 4, "window_hours": 10},
        {"kind": "hourly", "interval_hours": 8, "window_start": time(1), "window_hours": 4},
        {"kind": "hourly", "interval_hours": 4, "window_start": time(1), "window_hours": 25},
        {"kind": "hourly", "interval_hours": 4.0, "window_start": time(1), "window_hours": 8},
        {
            "kind": "hourly",
            "interval_hours": 4,
            "window_start": time(1),
            "window_hours": 8,
            "times": (time(1),),
        },
    ],
)
def test_invalid_schedules_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(KluisError) as info:
        Schedule(**kwargs)  # type: ignore[arg-type]
    assert info.value.code == "ValidationFailed"
    assert info.value.params["reason"]


def test_dict_round_trip_and_parsing() -> None:
    weekly = Schedule.from_dict(
        {"kind": "weekly", "timezone": AMS, "times": ["21:00", "06:30"], "weekdays": ["sun", 2]}
    )
    assert weekly.times == (time(6, 30), time(21, 0))
    assert weekly.weekdays == (2, 6)
    assert Schedule.from_dict(weekly.to_dict()) == weekly
    hourly = Schedule("hourly", "Asia/Kolkata", interval_hours=6, window_start=time(20, 30), window_hours=12)
    assert Schedule.from_dict(hourly.to_dict()) == hourly
    assert hash(Schedule.from_dict(hourly.to_dict())) == hash(hourly)
    assert hourly.max_runs_per_day() == 2
    assert weekly.max_runs_per_day() == 2
    bad_inputs: list[object] = [
        {"kind": "daily", "times": ["25:00"]},
        {"kind": "daily", "times": "01:00"},
        {"kind": "daily", "times": ["01:00"], "colour": "red"},
        {"kind": "weekly", "times": ["01:00"], "weekdays": ["funday"]},
        [],
    ]
    for bad in bad_inputs:
        with pytest.raises(KluisError) as info:
            Schedule.from_dict(bad)  # type: ignore[arg-type]
        assert info.value.code == "ValidationFailed"


# --- hypothesis: brute-force oracle over many zones and dates --------------------------------


@lru_cache(maxsize=4096)
def transitions(zone_name: str, year: int) -> tuple[datetime, ...]:
    """UTC instants (whole minutes) where the zone's offset changes during ``year``."""
    zone = ZoneInfo(zone_name)
    found: list[datetime] = []
    t = utc(year, 1, 1)
    end = utc(year + 1, 1, 1)
    step = timedelta(days=1)
    while t < end:
        a, b = t.astimezone(zone).utcoffset(), (t + step).astimezone(zone).utcoffset()
        if a != b:
            lo, hi = t, t + step
            while hi - lo > timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(second=0, microsecond=0)
                if mid.astimezone(zone).utcoffset() == a:
                    lo = mid
                else:
                    hi = mid
            found.append(hi)
        t += step
    return tuple(found)


@lru_cache(maxsize=64)
def all_transitions(zone_name: str) -> tuple[datetime, ...]:
    return tuple(t for year in range(2000, 2038) for t in transitions(zone_name, year))


def oracle_walls(s: Schedule, first: date, last: date) -> set[datetime]:
    """Scheduled naive wall times, written out plainly from the schedule's fields."""
    walls: set[datetime] = set()
    day = first
    while day <= last:
        if s.kind == "daily":
            walls.update(datetime.combine(day, t) for t in s.times)
        elif s.kind == "weekly":
            if day.weekday() in s.weekdays:
                walls.update(datetime.combine(day, t) for t in s.times)
        else:
            assert s.window_start and s.interval_hours and s.window_hours
            k = 0
            while k * s.interval_hours < s.window_hours:
                walls.add(datetime.combine(day, s.window_start) + timedelta(hours=k * s.interval_hours))
                k += 1
        day += timedelta(days=1)
    return walls


def oracle_runs(s: Schedule, start: datetime, end: datetime) -> list[datetime]:
    zone = s.zone
    walls = oracle_walls(
        s, start.astimezone(zone).date() - timedelta(days=3), end.astimezone(zone).date() + timedelta(days=3)
    )
    minute = timedelta(minutes=1)
    u = start.replace(second=0, microsecond=0) + minute
    prev = (u - minute).astimezone(zone)
    runs: list[datetime] = []
    while u <= end:
        here = u.astimezone(zone)
        wall = here.replace(tzinfo=None)
        before = prev.replace(tzinfo=None)
        hit = wall in walls and here.fold == 0
        if not hit and wall - before > minute:
            # Clocks jumped: a scheduled wall time inside the skipped stretch runs now.
            w = before + minute
            while w < wall and not hit:
                hit = w in walls
                w += minute
        if hit:
            runs.append(u)
        prev = here
        u += minute
    return runs


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    zone = draw(st.sampled_from(ZONES))
    kind = draw(st.sampled_from(["daily", "weekly", "hourly"]))
    minute_times = st.builds(time, st.integers(0, 23), st.sampled_from([0, 0, 30, 15, 59, 1]))
    if kind == "hourly":
        interval = draw(st.sampled_from([4, 6, 8, 12]))
        return Schedule(
            "hourly",
            zone,
            interval_hours=interval,
            window_start=draw(minute_times),
            window_hours=draw(st.integers(interval, 24)),
        )
    times = tuple(draw(st.lists(minute_times, min_size=1, max_size=3, unique=True)))
    weekdays = tuple(draw(st.sets(st.integers(0, 6), min_size=1))) if kind == "weekly" else ()
    return Schedule(kind, zone, times=times, weekdays=weekdays)  # type: ignore[arg-type]


@st.composite
def range_starts(draw: st.DrawFn, s: Schedule) -> datetime:
    year = draw(st.integers(2000, 2037))
    near = transitions(s.timezone, year)
    use_change = draw(st.booleans())
    if near and use_change:
        center = draw(st.sampled_from(near))
        return center - timedelta(minutes=draw(st.integers(0, 3 * 24 * 60)))
    return utc(year, 1, 1) + timedelta(minutes=draw(st.integers(0, 365 * 24 * 60)))


DST_ZONES = [
    z
    for z in (
        "Europe/Amsterdam",
        "America/New_York",
        "America/Santiago",
        "Australia/Lord_Howe",
        "Australia/Sydney",
        "Europe/Dublin",
        "Pacific/Chatham",
        "Asia/Tehran",
        "America/Havana",
        "Pacific/Apia",
        "Africa/Casablanca",
        "America/St_Johns",
        "Antarctica/Troll",
    )
    if z in ZONES
]


@st.composite
def schedules_at_transitions(draw: st.DrawFn) -> tuple[Schedule, datetime]:
    """A schedule with a slot right at or inside a clock change, and a range around it."""
    zone_name = draw(st.sampled_from(DST_ZONES))
    zone = ZoneInfo(zone_name)
    change = draw(st.sampled_from(all_transitions(zone_name)))
    before = (change - timedelta(minutes=1)).astimezone(zone).replace(tzinfo=None)
    wall = before + timedelta(minutes=draw(st.integers(-60, 150)))
    slot = wall.time().replace(second=0)
    kind = draw(st.sampled_from(["daily", "weekly", "hourly"]))
    if kind == "hourly":
        interval = draw(st.sampled_from([4, 6, 8, 12]))
        k = draw(st.integers(0, 24 // interval - 1))
        start_wall = (datetime.combine(date(2000, 1, 1), slot) - timedelta(hours=k * interval)).time()
        s = Schedule("hourly", zone_name, interval_hours=interval, window_start=start_wall, window_hours=24)
    else:
        others = draw(st.lists(st.builds(time, st.integers(0, 23), st.sampled_from([0, 30])), max_size=2))
        times = tuple(sorted({slot, *others}))
        weekdays = (wall.date().weekday(),) if kind == "weekly" else ()
        s = Schedule(kind, zone_name, times=times, weekdays=weekdays)  # type: ignore[arg-type]
    return s, change - timedelta(minutes=draw(st.integers(1, 2 * 24 * 60)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=schedules_at_transitions())
def test_runs_at_clock_changes_match_brute_force_oracle(case: tuple[Schedule, datetime]) -> None:
    s, start = case
    end = start + timedelta(days=3)
    assert runs_between(s, start, end) == oracle_runs(s, start, end)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_runs_match_brute_force_oracle(data: st.DataObject) -> None:
    s = data.draw(schedules())
    start = data.draw(range_starts(s))
    end = start + timedelta(days=3)
    expected = oracle_runs(s, start, end)
    assert runs_between(s, start, end) == expected
    # next_run / previous_run / due_run agree with the list.
    if expected:
        assert next_run(s, start) == expected[0]
        assert previous_run(s, end) == expected[-1]
        assert due_run(s, start, end) == expected[-1]
        mid = expected[len(expected) // 2]
        assert due_run(s, mid, end) == (expected[-1] if expected[-1] > mid else None)
    else:
        assert due_run(s, start, end) is None


@settings(max_examples=150, deadline=None)
@given(s=schedules(), offset=st.integers(0, 38 * 365 * 24 * 60), days=st.integers(1, 40))
def test_runs_are_sorted_unique_and_partition(s: Schedule, offset: int, days: int) -> None:
    start = utc(2000, 1, 1) + timedelta(minutes=offset)
    end = start + timedelta(days=days)
    mid = start + (end - start) / 3
    whole = runs_between(s, start, end)
    assert whole == sorted(set(whole))
    assert all(start < r <= end and r.tzinfo is UTC for r in whole)
    assert runs_between(s, start, mid) + runs_between(s, mid, end) == whole
    # Walking with next_run visits the same runs.
    walked: list[datetime] = []
    t = start
    while (t := next_run(s, t)) <= end:
        walked.append(t)
    assert walked == whole
    # No week without a run, and never more runs a day than the schedule allows (+1 for a gap
    # merging into a day boundary is impossible: runs only collapse).
    assert len(whole) <= (days + 2) * s.max_runs_per_day()
    if days >= 8:
        assert whole
