"""vault_load.py's scheduler phases: the server's own loop, and one tick in a child process."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from vault_bench_support import PYTHON, VaultServer, log

HERE = Path(__file__).resolve().parent
API = "/api/v1"
POLICY = "bench-daily"


def _check(resp: httpx.Response, what: str) -> Any:
    if resp.status_code >= 400:
        raise RuntimeError(f"{what}: HTTP {resp.status_code} {resp.text[:500]}")
    return resp.json() if resp.content else None


# -- scheduler ------------------------------------------------------------------------------------


def _count_scheduled(db: Any) -> tuple[int, dt.datetime | None, dt.datetime | None, dt.datetime | None]:
    from sqlalchemy import func, select

    from kluis.vault.db.models import Job, Lease

    with db.read() as s:
        count, first, last = s.execute(
            select(func.count(), func.min(Job.created_at), func.max(Job.created_at)).where(
                Job.type == "Backup", Job.trigger == "Scheduled"
            )
        ).one()
        expires = s.scalar(select(Lease.expires_at).where(Lease.name == "scheduler"))
    return int(count), first, last, expires


def scheduler_loop_phase(server: VaultServer, admin: str, n_items: int, timeout: float) -> dict[str, Any]:
    """Set the daily time to the next minute and watch the server's own loop create the jobs."""
    from kluis.vault.db.session import Database

    cfg = server.config()
    db = Database(cfg.db_url)
    try:
        now = dt.datetime.now(dt.UTC)
        at = (now + dt.timedelta(seconds=75)).replace(second=0, microsecond=0)
        schedule = {"kind": "daily", "timezone": "UTC", "times": [at.strftime("%H:%M")]}
        resp = httpx.put(
            f"{server.url}{API}/policies/{POLICY}",
            json={"schedule": schedule},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=60,
        )
        _check(resp, "policy change")
        log(f"scheduler (server loop): policy time {at:%H:%M:%S} UTC, waiting")
        renewals: list[dt.datetime] = []
        count = 0
        first = last = None
        reached: float | None = None
        deadline = at.timestamp() + timeout
        while time.time() < deadline:
            count, first, last, expires = _count_scheduled(db)
            if expires is not None:
                renewed = expires - dt.timedelta(seconds=cfg.lease_ttl)
                if not renewals or renewals[-1] != renewed:
                    renewals.append(renewed)
            if count >= n_items:
                reached = time.time()
                break
            time.sleep(0.25)
        tick_start = max((r for r in renewals if first is not None and r <= first), default=None)
        out: dict[str, Any] = {
            "policy_time": at.isoformat(),
            "jobs": count,
            "interval_s": cfg.scheduler_interval,
            "spread_s": cfg.schedule_spread,
        }
        if first is not None and last is not None:
            out["policy_time_to_first_job_s"] = round((first - at).total_seconds(), 2)
            out["policy_time_to_all_jobs_s"] = round((last - at).total_seconds(), 2)
            if tick_start is not None:
                out["tick_start_to_first_job_s"] = round((first - tick_start).total_seconds(), 2)
                out["tick_start_to_all_jobs_s"] = round((last - tick_start).total_seconds(), 2)
        if reached is None:
            out["timed_out"] = True
        return out
    finally:
        db.dispose()


def cancel_scheduled(server: VaultServer) -> int:
    """Set-up for the in-process tick: end the scheduled jobs, as if their agents had run them."""
    from sqlalchemy import update

    from kluis.vault.db.models import Job
    from kluis.vault.db.session import Database
    from kluis.vault.db.types import utcnow

    db = Database(server.config().db_url)
    try:
        with db.write() as s:
            done: Any = s.execute(
                update(Job)
                .where(Job.type == "Backup", Job.status.in_(("InProgress", "Cancelling")))
                .values(status="Cancelled", ended_at=utcnow(), updated_at=utcnow())
            )
            return int(done.rowcount or 0)
    finally:
        db.dispose()


def tick_child(data: Path, at: str, spread: int) -> None:
    """In a child process: one ``Scheduler.tick`` at ``at`` on the vault in ``data``; prints JSON."""
    from kluis.vault.app import open_context
    from kluis.vault.config import VaultConfig
    from kluis.vault.scheduler import Scheduler

    cfg = VaultConfig.load(data / "vault.toml")
    cfg.schedule_spread = spread
    ctx = open_context(cfg)
    try:
        now = dt.datetime.fromisoformat(at)
        t0 = time.perf_counter()
        due = Scheduler(ctx).due_items(now)
        t_due = time.perf_counter() - t0
        t0 = time.perf_counter()
        counts = Scheduler(ctx).tick(now)
        seconds = time.perf_counter() - t0
    finally:
        ctx.close()
    print(
        json.dumps(
            {"seconds": round(seconds, 2), "due_items_seconds": round(t_due, 2), "due": len(due), **counts}
        )
    )


def scheduler_tick_phase(
    server: VaultServer, policy_time: str, n_items: int, profile: Path | None
) -> dict[str, Any]:
    """The in-process tick one day later plus the default spread, timed in a child process."""
    cancelled = cancel_scheduled(server)
    at = (dt.datetime.fromisoformat(policy_time) + dt.timedelta(days=1, seconds=1801)).isoformat()
    argv = [
        str(PYTHON),
        str(HERE / "vault_load.py"),
        "tick",
        "--data",
        str(server.data),
        "--at",
        at,
        "--spread",
        "1800",
    ]
    if profile is not None:
        spy = str(Path(PYTHON).parent / "py-spy")
        argv = [
            spy,
            "record",
            "--format",
            "raw",
            "--nolineno",
            "--rate",
            "50",
            "--output",
            str(profile),
            "--",
            *argv,
        ]
    log(f"scheduler (in process): tick at {at} over {n_items} items")
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"tick failed: {done.stderr[-3000:]}")
    # py-spy writes its own lines to stdout too: the answer is the line that is a JSON object.
    result: dict[str, Any] = json.loads(
        [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    )
    result["set_up_cancelled_jobs"] = cancelled
    result["clock"] = at
    return result
