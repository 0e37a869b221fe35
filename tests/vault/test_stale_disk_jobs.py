"""Stale disk backup jobs: silent in the snapshot phase is the seeds' snapshot-status error.

The scheduler's clock is driven by the test (as in test_scheduler.py) on a fresh database
of each backend; the agent side is the vault's own claim and progress functions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from kluis.vault import agent_jobs, items, machines, policies
from kluis.vault.app import open_context
from kluis.vault.auth import Principal, Role
from kluis.vault.config import new_config
from kluis.vault.context import VaultContext
from kluis.vault.db.models import Alert, Job
from kluis.vault.scheduler import Scheduler

UTC = dt.UTC
ADMIN = Principal("user", "admin", role=Role.ADMIN, user_id="x")
DAILY = {"kind": "daily", "timezone": "UTC", "times": ["02:30"]}


@pytest.fixture
def ctx(new_db_url: Callable[[], str], tmp_path: Path) -> Iterator[VaultContext]:
    """A vault context on a fresh database (no server: the test is the clock)."""
    cfg = new_config(tmp_path, "stale")
    cfg.db_url = new_db_url()
    cfg.schedule_spread = 0
    context = open_context(cfg)
    yield context
    context.close()


def _machine(ctx: VaultContext) -> str:
    reg = machines.Registration(
        hostname="vmhost", os="Linux", agent_version="0.1.0", key_fingerprint="cd" * 16
    )
    with ctx.db.write() as s:
        return str(machines.register(s, ctx.config, reg, ADMIN)["machine_id"])


def _item(ctx: VaultContext, machine_id: str, kind: str, name: str, instant_days: int = 3) -> str:
    spec: dict[str, Any] = {"disks": ["vm1"]} if kind == "disks" else {"paths": ["/srv"]}
    with ctx.db.write() as s:
        policy = policies.create(s, f"p-{name}", DAILY, {"daily": 30, "instant_days": instant_days})
        item, _ = items.enable(
            s, machine_id=machine_id, name=name, kind=kind, spec=spec, policy_ref=policy.id, created_by="t"
        )
        item.last_slot_at = dt.datetime.now(UTC) - dt.timedelta(days=2)
        return item.id


def _backup(ctx: VaultContext, item_id: str) -> Job:
    with ctx.db.read() as s:
        # The first one: a later tick may queue the next day's run, depending on the hour.
        job = s.scalar(
            select(Job).where(Job.item_id == item_id, Job.type == "Backup").order_by(Job.created_at).limit(1)
        )
        assert job is not None
        return job


def test_silent_in_snapshot_phase_is_a_snapshot_status_error(ctx: VaultContext) -> None:
    machine_id = _machine(ctx)
    snapping = _item(ctx, machine_id, "disks", "snapping", instant_days=3)
    sending = _item(ctx, machine_id, "disks", "sending")
    files = _item(ctx, machine_id, "files", "files")
    now = dt.datetime.now(UTC)
    sched = Scheduler(ctx)
    sched.tick(now)
    # The agent claims all three: the claim puts them in the first phase, "Take snapshot",
    # and a disk job's descriptor carries the policy's instant recovery point days.
    with ctx.db.write() as s:
        handed = agent_jobs.claim(s, machine_id, now + dt.timedelta(seconds=1), sweeping=False)["jobs"]
    by_item = {d["item"]["id"]: d for d in handed}
    assert set(by_item) == {snapping, sending, files}
    assert by_item[snapping]["params"]["instant_days"] == 3
    assert "instant_days" not in by_item[files]["params"]
    for d in handed:
        assert d["type"] == "Backup"
    # One disk job reaches the transfer phase; then the agent goes silent.
    sending_job = by_item[sending]["id"]
    with ctx.db.write() as s:
        s.execute(update(Job).where(Job.id == sending_job).values(phase="Transfer data to vault"))

    sched.tick(now + dt.timedelta(minutes=30))  # within the 1 h stall timeout
    assert _backup(ctx, snapping).status == "InProgress"

    sched.tick(now + dt.timedelta(hours=2))
    stuck = _backup(ctx, snapping)
    assert stuck.status == "Failed" and stuck.error["code"] == "GuestAgentSnapshotTaskStatusError", (
        stuck.error
    )
    assert "vmhost" in stuck.error["message"]
    # Seconds since the agent took the job, as the message says.
    assert "7199 seconds" in stuck.error["message"] or "7200 seconds" in stuck.error["message"]
    assert _backup(ctx, sending).error["code"] == "JobAgentTimeout"
    # A files backup has no snapshot task: the generic timeout, whatever its phase says.
    assert _backup(ctx, files).error["code"] == "JobAgentTimeout"
    with ctx.db.read() as s:
        codes = sorted(a.code for a in s.scalars(select(Alert)))
    assert codes == ["GuestAgentSnapshotTaskStatusError", "JobAgentTimeout", "JobAgentTimeout"]
