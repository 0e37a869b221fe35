"""The scheduler: jobs at policy times (DST in Europe/Amsterdam), missed runs once, overlap,
spreading, stale jobs, daily maintenance; and the lease between two vault processes.

Tick tests drive ``Scheduler.tick(now)`` with a controlled clock against a fresh
database of each backend; the lease test runs two real server processes.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from kluis.vault import items, jobs, machines, policies
from kluis.vault.app import open_context
from kluis.vault.auth import Principal, Role
from kluis.vault.config import new_config
from kluis.vault.context import VaultContext
from kluis.vault.db.models import Alert, Job, ProtectedItem
from kluis.vault.scheduler import BATCH, Scheduler
from tests.vault.helpers import Agent, VaultServer

UTC = dt.UTC
ADMIN = Principal("user", "admin", role=Role.ADMIN, user_id="x")
DAILY_0230 = {"kind": "daily", "timezone": "Europe/Amsterdam", "times": ["02:30"]}


@pytest.fixture
def ctx(new_db_url: Callable[[], str], tmp_path: Path) -> Iterator[VaultContext]:
    """A vault context on a fresh database (no server: the test is the clock)."""
    cfg = new_config(tmp_path, "sched")
    cfg.db_url = new_db_url()
    cfg.schedule_spread = 0
    context = open_context(cfg)
    yield context
    context.close()


def _machine(ctx: VaultContext, name: str = "host-a") -> str:
    reg = machines.Registration(hostname=name, os="Linux", agent_version="0.1.0", key_fingerprint="ab" * 16)
    with ctx.db.write() as s:
        return str(machines.register(s, ctx.config, reg, ADMIN)["machine_id"])


def _item(
    ctx: VaultContext,
    machine_id: str,
    schedule: dict[str, Any],
    last_slot: dt.datetime,
    name: str = "i",
    retention: dict[str, int] | None = None,
) -> str:
    with ctx.db.write() as s:
        policy = policies.create(s, f"p-{name}", schedule, retention or {"daily": 30})
        item, _ = items.enable(
            s,
            machine_id=machine_id,
            name=name,
            kind="files",
            spec={"paths": ["/"]},
            policy_ref=policy.id,
            created_by="test",
        )
        item.last_slot_at = last_slot
        return item.id


def _backups(ctx: VaultContext, item_id: str) -> list[Job]:
    with ctx.db.read() as s:
        return list(
            s.scalars(
                select(Job).where(Job.item_id == item_id, Job.type == "Backup").order_by(Job.created_at)
            )
        )


def _finish(ctx: VaultContext, job_id: str) -> None:
    with ctx.db.write() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="Completed"))


def test_spring_forward_runs_once_after_the_gap(ctx: VaultContext) -> None:
    # 2027-03-28: clocks go from 02:00 to 03:00 in Amsterdam; 02:30 does not exist.
    item_id = _item(ctx, _machine(ctx), DAILY_0230, dt.datetime(2027, 3, 27, 12, 0, tzinfo=UTC))
    sched = Scheduler(ctx)
    sched.tick(dt.datetime(2027, 3, 28, 0, 59, tzinfo=UTC))
    assert _backups(ctx, item_id) == []
    sched.tick(dt.datetime(2027, 3, 28, 1, 0, 30, tzinfo=UTC))  # 03:00:30 local, just after the gap
    jobs = _backups(ctx, item_id)
    assert len(jobs) == 1 and jobs[0].trigger == "Scheduled"
    assert jobs[0].params["scheduled_for"] == "2027-03-28T01:00:00+00:00"
    _finish(ctx, jobs[0].id)
    for minute in range(0, 240, 30):
        sched.tick(dt.datetime(2027, 3, 28, 1, 1, tzinfo=UTC) + dt.timedelta(minutes=minute))
    assert len(_backups(ctx, item_id)) == 1


def test_fall_back_does_not_run_twice(ctx: VaultContext) -> None:
    # 2027-10-31: 02:00-03:00 happens twice in Amsterdam; 02:30 runs at its first occurrence only.
    item_id = _item(ctx, _machine(ctx), DAILY_0230, dt.datetime(2027, 10, 30, 12, 0, tzinfo=UTC))
    sched = Scheduler(ctx)
    sched.tick(dt.datetime(2027, 10, 31, 0, 31, tzinfo=UTC))  # 02:31 CEST
    jobs = _backups(ctx, item_id)
    assert len(jobs) == 1 and jobs[0].params["scheduled_for"] == "2027-10-31T00:30:00+00:00"
    _finish(ctx, jobs[0].id)
    sched.tick(dt.datetime(2027, 10, 31, 1, 31, tzinfo=UTC))  # 02:31 CET, the repeated hour
    sched.tick(dt.datetime(2027, 10, 31, 12, 0, tzinfo=UTC))
    assert len(_backups(ctx, item_id)) == 1
    sched.tick(dt.datetime(2027, 11, 1, 1, 31, tzinfo=UTC))  # the next day's 02:30 CET
    assert len(_backups(ctx, item_id)) == 2


def test_missed_runs_are_handled_once(ctx: VaultContext) -> None:
    item_id = _item(ctx, _machine(ctx), DAILY_0230, dt.datetime(2027, 5, 1, 12, 0, tzinfo=UTC))
    sched = Scheduler(ctx)
    sched.tick(dt.datetime(2027, 5, 7, 12, 0, tzinfo=UTC))  # six runs missed while the vault was down
    jobs = _backups(ctx, item_id)
    assert len(jobs) == 1 and jobs[0].params["scheduled_for"] == "2027-05-07T00:30:00+00:00"
    sched.tick(dt.datetime(2027, 5, 7, 12, 1, tzinfo=UTC))
    assert len(_backups(ctx, item_id)) == 1


def test_overlap_is_recorded_as_a_failed_job_without_alert(ctx: VaultContext) -> None:
    twice = {**DAILY_0230, "times": ["02:30", "14:30"]}
    item_id = _item(ctx, _machine(ctx), twice, dt.datetime(2027, 5, 1, 12, 0, tzinfo=UTC))
    sched = Scheduler(ctx)
    sched.tick(dt.datetime(2027, 5, 2, 1, 0, tzinfo=UTC))
    sched.tick(dt.datetime(2027, 5, 2, 13, 0, tzinfo=UTC))  # the first backup still runs
    jobs = _backups(ctx, item_id)
    assert [j.status for j in jobs] == ["InProgress", "Failed"]
    assert jobs[1].error["code"] == "UserErrorBackupOperationInProgress"
    assert jobs[1].error["params"]["job"] == jobs[0].id
    with ctx.db.read() as s:
        assert s.scalars(select(Alert)).all() == []


def test_runs_are_spread_over_the_window(ctx: VaultContext) -> None:
    ctx.config.schedule_spread = 1800
    machine_id = _machine(ctx)
    last = dt.datetime(2027, 5, 1, 12, 0, tzinfo=UTC)
    with ctx.db.write() as s:
        policy = policies.create(s, "shared", DAILY_0230, {"daily": 30})
        ids = []
        for n in range(60):
            item, _ = items.enable(
                s,
                machine_id=machine_id,
                name=f"item-{n}",
                kind="files",
                spec={"paths": ["/"]},
                policy_ref=policy.id,
                created_by="test",
            )
            item.last_slot_at = last
            ids.append(item.id)
    run = dt.datetime(2027, 5, 2, 0, 30, tzinfo=UTC)
    sched = Scheduler(ctx)
    created = [sched.tick(run + dt.timedelta(minutes=m))["created"] for m in range(0, 31, 5)]
    assert sum(created) == 60
    assert created[0] < 10 and max(created) < 30  # not all in the first second
    with ctx.db.read() as s:
        starts = sorted(s.scalars(select(Job.not_before).where(Job.type == "Backup")))
    assert starts[0] >= run and starts[-1] < run + dt.timedelta(minutes=30)
    assert len(set(starts)) > 50


def _many_items(ctx: VaultContext, count: int, last: dt.datetime) -> list[str]:
    machine_id = _machine(ctx)
    with ctx.db.write() as s:
        policy = policies.create(s, "many", DAILY_0230, {"daily": 30})
        ids = []
        for n in range(count):
            item, _ = items.enable(
                s,
                machine_id=machine_id,
                name=f"item-{n}",
                kind="files",
                spec={"paths": ["/"]},
                policy_ref=policy.id,
                created_by="test",
            )
            item.last_slot_at = last
            ids.append(item.id)
    return ids


def test_batches_create_one_job_per_item_and_later_ticks_find_none(ctx: VaultContext) -> None:
    # More items than one batch (500): every batch inserts its jobs and moves its items' slots.
    ids = _many_items(ctx, BATCH * 2 + 7, dt.datetime(2027, 5, 1, 12, 0, tzinfo=UTC))
    sched = Scheduler(ctx)
    now = dt.datetime(2027, 5, 2, 1, 0, tzinfo=UTC)
    assert sched.tick(now)["created"] == len(ids)
    with ctx.db.read() as s:
        rows = s.execute(select(Job.item_id, Job.trigger, Job.status, Job.params).where(Job.type == "Backup"))
        seen = [
            (item_id, trigger, status, params["scheduled_for"]) for item_id, trigger, status, params in rows
        ]
        slots = set(s.scalars(select(ProtectedItem.last_slot_at).where(ProtectedItem.id.in_(ids))))
    assert sorted(i for i, *_ in seen) == sorted(ids)
    assert {(trigger, status, slot) for _, trigger, status, slot in seen} == {
        ("Scheduled", "InProgress", "2027-05-02T00:30:00+00:00")
    }
    assert slots == {dt.datetime(2027, 5, 2, 0, 30, tzinfo=UTC)}
    # Every item has handled the latest run: the next ticks are not even handed an item.
    assert sched.due_items(now + dt.timedelta(hours=5)) == []
    assert sched.tick(now + dt.timedelta(hours=5))["created"] == 0


def test_a_backup_started_during_the_batch_falls_back_to_one_job_at_a_time(
    ctx: VaultContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real time: the running job must not look stale to the tick.
    now = dt.datetime.now(UTC)
    ids = _many_items(ctx, 5, now - dt.timedelta(days=2))
    with ctx.db.write() as s:
        item = s.get(ProtectedItem, ids[2])
        assert item is not None
        running = jobs.start_backup(s, item, trigger="OnDemand", created_by="operator")
    sched = Scheduler(ctx)
    real = Scheduler._batch_state
    calls: list[int] = []

    def blind_first(self: Scheduler, s: Any, batch: Any) -> Any:
        # The first look misses the running backup, as if it started right after the check.
        found, rows = real(self, s, batch)
        calls.append(len(found))
        return (set() if len(calls) == 1 else found), rows

    monkeypatch.setattr(Scheduler, "_batch_state", blind_first)
    counts = sched.tick(now)
    assert len(calls) == 2  # the fast path hit the unique index, the slow path ran
    assert counts["created"] == 4 and counts["in_progress"] == 1
    held = _backups(ctx, ids[2])
    assert (held[0].id, held[0].status) == (running.id, "InProgress")
    assert held[1].status == "Failed" and held[1].error["code"] == "UserErrorBackupOperationInProgress"
    for other in ids[:2] + ids[3:]:
        assert [j.trigger for j in _backups(ctx, other)] == ["Scheduled"]


def test_stopped_items_are_not_scheduled(ctx: VaultContext) -> None:
    item_id = _item(ctx, _machine(ctx), DAILY_0230, dt.datetime(2027, 5, 1, 12, 0, tzinfo=UTC))
    with ctx.db.write() as s:
        items.stop(s, item_id, delete_data=False, created_by="test")
    Scheduler(ctx).tick(dt.datetime(2027, 5, 3, 1, 0, tzinfo=UTC))
    assert _backups(ctx, item_id) == []


def test_stale_jobs_fail_with_codes_and_alerts(ctx: VaultContext) -> None:
    machine_id = _machine(ctx)
    # Real time (the jobs' own timestamps are), so the schedule is set relative to it: a weekly
    # run two days ago and none in the next 25 hours, whatever the time of day. A daily one
    # made this test depend on the hour at which it ran.
    now = dt.datetime.now(UTC)
    slot = (now - dt.timedelta(days=2)).astimezone(ZoneInfo("Europe/Amsterdam"))
    weekly = {
        "kind": "weekly",
        "timezone": "Europe/Amsterdam",
        "weekdays": [slot.strftime("%A").lower()],
        "times": [slot.strftime("%H:%M")],
    }
    last = now - dt.timedelta(days=3)
    keep = {"weekly": 4, "weekly_weekday": slot.weekday()}
    never = _item(ctx, machine_id, weekly, last, name="never", retention=keep)
    silent = _item(ctx, machine_id, weekly, last, name="silent", retention=keep)
    sched = Scheduler(ctx)
    sched.tick(now)
    with ctx.db.write() as s:
        s.execute(update(Job).where(Job.item_id == silent).values(dispatched_at=now, updated_at=now))
        # A job queued now for a slot 23 h ago still gets the whole dispatch timeout (this
        # once failed at night, when the latest 02:30 slot was nearly a day old).
        s.execute(update(Job).where(Job.item_id == never).values(not_before=now - dt.timedelta(hours=23)))
    sched.tick(now + dt.timedelta(hours=2))  # stall timeout is 1 h
    assert _backups(ctx, silent)[0].error["code"] == "JobAgentTimeout"
    assert _backups(ctx, never)[0].status == "InProgress"
    sched.tick(now + dt.timedelta(hours=25))  # dispatch timeout is 24 h
    assert _backups(ctx, never)[0].error["code"] == "UserErrorGuestAgentStatusUnavailable"
    with ctx.db.read() as s:
        codes = sorted(a.code for a in s.scalars(select(Alert)))
    assert codes == ["JobAgentTimeout", "UserErrorGuestAgentStatusUnavailable"]


def test_daily_maintenance_is_queued_once(ctx: VaultContext) -> None:
    sched = Scheduler(ctx)
    day = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert sched.tick(day + dt.timedelta(hours=2, minutes=59))["maintenance"] == 0
    assert sched.tick(day + dt.timedelta(hours=3, minutes=1))["maintenance"] == 1
    assert sched.tick(day + dt.timedelta(hours=4))["maintenance"] == 0
    with ctx.db.read() as s:
        assert len(s.scalars(select(Job).where(Job.type == "Retention")).all()) == 1


# -- several vault processes ------------------------------------------------------------------


def _holder(vault: VaultServer) -> dict[str, Any]:
    info: dict[str, Any] = vault.ok("GET", "/api/v1/vault")
    return info


def _wait(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_lease_takeover_between_two_vault_processes(
    make_vault: Callable[..., VaultServer], tmp_path: Path
) -> None:
    first = make_vault()
    first.start()
    second = VaultServer.sharing(first, tmp_path / "second").start()
    try:
        _wait(lambda: _holder(first)["scheduler"]["this_process"], 10)
        assert _holder(second)["scheduler"]["this_process"] is False
        assert _holder(second)["scheduler"]["holder"] == _holder(first)["process"]

        # Exactly one process schedules: a due run becomes one job, not two.
        agent = Agent(first).registered()
        policy = first.policy(
            schedule={
                "kind": "hourly",
                "timezone": "UTC",
                "interval_hours": 4,
                "window_start": "00:00",
                "window_hours": 24,
            }
        )
        item_id = first.item(agent.machine_id, policy["id"])["id"]

        def backups() -> list[Any]:
            rows: list[Any] = first.ok("GET", "/api/v1/jobs", params={"item_id": item_id, "type": "Backup"})
            return rows

        with first.db.write() as s:
            s.execute(
                update(ProtectedItem)
                .where(ProtectedItem.id == item_id)
                .values(last_slot_at=dt.datetime.now(UTC) - dt.timedelta(days=1))
            )
        _wait(lambda: len(backups()) == 1, 10)
        time.sleep(1.0)
        assert len(backups()) == 1

        # The holder dies without releasing: the other takes over once the lease expires.
        first.kill()
        died = time.monotonic()
        _wait(lambda: _holder(second)["scheduler"]["this_process"], 15)
        assert time.monotonic() - died >= 1.0  # not before the 2 s lease ran out (minus polling)
        job_id = backups_via(second, item_id)[0]["id"]
        second.ok("POST", f"/api/v1/jobs/{job_id}/cancel")
        with second.db.write() as s:
            s.execute(
                update(ProtectedItem)
                .where(ProtectedItem.id == item_id)
                .values(last_slot_at=dt.datetime.now(UTC) - dt.timedelta(days=1))
            )
        _wait(lambda: len(backups_via(second, item_id)) == 2, 10)

        # A clean stop hands the lease over at once.
        first.start()
        second.stop()
        _wait(lambda: _holder(first)["scheduler"]["this_process"], 5)
    finally:
        second.close()


def backups_via(vault: VaultServer, item_id: str) -> list[Any]:
    """Backup jobs of an item, newest first."""
    rows: list[Any] = vault.ok("GET", "/api/v1/jobs", params={"item_id": item_id, "type": "Backup"})
    return rows
