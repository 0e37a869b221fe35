"""Jobs in progress on the machine's items, from the running daemon's status file.

A backup that runs now makes the next one of its item fail with
UserErrorBackupOperationInProgress until it ends (seeds 000, 002, 004), so a
running backup is a warning naming the job. Jobs recorded as running by a daemon
that is gone were interrupted: the agent reports them as failed when it starts again
(AgentRestartedDuringJob).
"""

from __future__ import annotations

import time

from kluis.catalog import KluisError
from kluis.doctor.context import MachineContext
from kluis.doctor.framework import Check, Result, catalog_checks, passed, warned
from kluis.doctor.service import daemon_pid, restart_fix

LONG_HOURS = 24


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def check_jobs(ctx: MachineContext) -> Result:
    """Warn about backups that run now (a new one would be refused) or were cut off."""
    running = ctx.state().get("running") or {}
    if not running:
        return passed("no job runs on this machine")
    jobs = sorted(running.items(), key=lambda kv: float(kv[1].get("started") or 0))
    if daemon_pid(ctx) is None:
        job_id, info = jobs[0]
        error = KluisError(
            "AgentRestartedDuringJob", job=job_id, started=_when(float(info.get("started") or 0))
        )
        return warned(
            error,
            "start the agent: it reports the interrupted jobs as failed; then run the backup again"
            " with `kluis backup now ITEM`",
            auto_fix=restart_fix(ctx),
            details={"jobs": list(running)},
        )
    backups = [(j, i) for j, i in jobs if i.get("type") == "Backup"]
    if not backups:
        kinds = ", ".join(f"{j} ({i.get('type')})" for j, i in jobs)
        return passed(f"running, none of them a backup: {kinds}", jobs=list(running))
    job_id, info = backups[0]
    hours = (ctx.now - float(info.get("started") or ctx.now)) / 3600
    item = str(info.get("item") or "?")
    if hours > LONG_HOURS:
        error = KluisError(
            "JobRunningLong", job=job_id, kind="Backup", hours=f"{hours:.1f}", limit=LONG_HOURS
        )
    else:
        error = KluisError("UserErrorBackupOperationInProgress", item=item, job=job_id)
    return warned(
        error,
        f"wait for job {job_id} to end (`kluis jobs show {job_id}`)"
        f" or cancel it: `kluis jobs cancel {job_id}`",
        summary=f"backup job {job_id} of item {item} runs since {_when(ctx.now - hours * 3600)}; another"
        " backup of that item is refused until it ends",
        details={"jobs": list(running)},
    )


CHECKS: list[Check[MachineContext]] = [
    Check(
        "jobs-in-progress",
        "Jobs in progress",
        check_jobs,
        ("UserErrorBackupOperationInProgress", "JobRunningLong", "AgentRestartedDuringJob"),
    ),
]
CATALOG_CHECKS = catalog_checks(CHECKS)
