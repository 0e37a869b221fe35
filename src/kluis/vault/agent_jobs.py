"""Agent jobs from the agent's side: claiming due work and reporting progress and results.

An agent's long poll asks :func:`has_work` (cheap) and then :func:`claim`, which hands out
the machine's due Backup and Restore jobs and the ids of those it must cancel. While a job
runs, :func:`report_progress` records its progress and answers whether to stop;
:func:`report_result` records how it ended, once (a retried report of the same end is
accepted), and raises or resolves alerts.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.vault import alerts
from kluis.vault.db.models import ACTIVE_JOB_STATUSES, Job, Policy, ProtectedItem, RecoveryPoint
from kluis.vault.db.types import utcnow
from kluis.vault.jobs import (
    AGENT_TYPES,
    BACKUP_PHASES,
    FINAL_STATUSES,
    RESTORE_PHASES,
    catalog_dict,
    iso,
)


def _waiting_work(now: dt.datetime) -> ColumnElement[bool]:
    """The jobs a claim would hand out or ask to cancel (for any machine)."""
    return Job.type.in_(AGENT_TYPES) & (
        ((Job.status == "InProgress") & Job.dispatched_at.is_(None) & (Job.not_before <= now))
        | ((Job.status == "Cancelling") & Job.dispatched_at.is_not(None))
    )


def has_work(session: Session, machine_id: str, now: dt.datetime) -> bool:
    """Cheap check whether a claim would return anything."""
    found = session.scalar(select(Job.id).where(Job.machine_id == machine_id, _waiting_work(now)).limit(1))
    return found is not None


def machines_with_work(session: Session, machine_ids: list[str], now: dt.datetime) -> set[str]:
    """Which of these machines have work waiting: one query for all of a process's waiting polls."""
    found: set[str] = set()
    for start in range(0, len(machine_ids), 500):
        chunk = machine_ids[start : start + 500]
        found.update(
            str(m)
            for m in session.scalars(
                select(Job.machine_id).where(Job.machine_id.in_(chunk), _waiting_work(now)).distinct()
            )
        )
    return found


def _descriptor(session: Session, job: Job) -> dict[str, Any]:
    item = session.get(ProtectedItem, job.item_id) if job.item_id else None
    params = dict(job.params or {})
    policy = session.get(Policy, item.policy_id) if item is not None and item.policy_id else None
    if job.type == "Backup" and policy is not None and item is not None and item.kind == "disks":
        # The agent keeps its local snapshots (instant recovery points) this many days.
        params.setdefault("instant_days", policy.instant_rp_days)
    out: dict[str, Any] = {
        "id": job.id,
        "type": job.type,
        "trigger": job.trigger,
        "params": params,
        "retain_until": iso(job.retain_until),
        "repository": {"machine_id": (job.params or {}).get("source_machine_id", job.machine_id)},
    }
    if item is not None:
        out["item"] = {"id": item.id, "name": item.name, "kind": item.kind, "spec": item.spec}
    return out


def claim(session: Session, machine_id: str, now: dt.datetime, sweeping: bool) -> dict[str, Any]:
    """Hand the agent its due jobs and the ids of jobs it must cancel.

    ``sweeping`` says garbage collection is sweeping this machine's repository (read
    under the GC state row's lock by the caller): backups then wait.
    """
    due = session.scalars(
        select(Job)
        .where(
            Job.machine_id == machine_id,
            Job.type.in_(AGENT_TYPES),
            Job.status == "InProgress",
            Job.dispatched_at.is_(None),
            Job.not_before <= now,
        )
        .order_by(Job.created_at)
        .limit(20)
    ).all()
    handed: list[dict[str, Any]] = []
    for job in due:
        if job.type == "Backup" and sweeping:
            continue
        job.dispatched_at = now
        job.updated_at = now
        job.phase = BACKUP_PHASES[0] if job.type == "Backup" else RESTORE_PHASES[0]
        handed.append(_descriptor(session, job))
    cancels = session.scalars(
        select(Job.id).where(
            Job.machine_id == machine_id, Job.status == "Cancelling", Job.dispatched_at.is_not(None)
        )
    ).all()
    return {"jobs": handed, "cancel": list(cancels)}


def _agent_job(session: Session, machine_id: str, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None or job.machine_id != machine_id or job.type not in AGENT_TYPES:
        raise KluisError("ResourceNotFound", kind="job", name=job_id)
    return job


def report_progress(
    session: Session, machine_id: str, job_id: str, progress: dict[str, Any]
) -> dict[str, Any]:
    """Record an agent's progress report; the answer tells it whether to stop."""
    job = _agent_job(session, machine_id, job_id)
    if job.status not in ACTIVE_JOB_STATUSES or job.dispatched_at is None:
        raise KluisError("JobNotInProgress", job=job.id, state=job.status)
    phase = progress.pop("phase", None)
    if phase:
        job.phase = phase
    merged = dict(job.progress or {})
    merged.update({k: v for k, v in progress.items() if v is not None})
    job.progress = merged
    job.updated_at = utcnow()
    return {"status": job.status, "cancel": job.status == "Cancelling"}


def report_result(
    session: Session,
    machine_id: str,
    job_id: str,
    *,
    status: str,
    error: dict[str, Any] | None,
    warnings: list[dict[str, Any]],
    stats: dict[str, Any],
) -> Job:
    """Record how an agent job ended; raises or resolves alerts."""
    job = _agent_job(session, machine_id, job_id)
    if status not in FINAL_STATUSES:
        raise KluisError("ValidationFailed", reason=f"status must be one of {', '.join(FINAL_STATUSES)}")
    if job.status in FINAL_STATUSES:
        if job.status == status:
            return job  # a retried report
        raise KluisError("JobNotInProgress", job=job.id, state=job.status)
    if job.dispatched_at is None:
        raise KluisError("JobNotInProgress", job=job.id, state="waiting for the agent")
    if status == "Failed" and not error:
        raise KluisError("ValidationFailed", reason="a failed job needs an error")
    if job.type == "Backup" and status in ("Completed", "CompletedWithWarnings"):
        point = session.scalar(select(RecoveryPoint.id).where(RecoveryPoint.job_id == job.id))
        if point is None:
            raise KluisError("ValidationFailed", reason="no recovery point was recorded for this backup")
    now = utcnow()
    if job.status == "Cancelling" and status != "Cancelled":
        job.cancel_error = catalog_dict(
            "JobCancelFailed", {"job": job.id, "reason": "the agent finished the job before it could stop"}
        )
    job.status = status
    job.ended_at = now
    job.updated_at = now
    if error:
        job.error = catalog_dict(
            str(error.get("code", "")), error.get("params"), error.get("message"), error.get("detail")
        )
    job.warnings = [
        catalog_dict(str(w.get("code", "")), w.get("params"), w.get("message"), w.get("detail"))
        for w in warnings
    ]
    job.result = {**(job.result or {}), "stats": stats}
    if status in ("Completed", "CompletedWithWarnings"):
        job.progress = {**(job.progress or {}), "percent": 100.0}
    if job.type == "Backup" and job.item_id:
        item = session.get(ProtectedItem, job.item_id)
        if item is not None:
            item.last_backup_at = now
            item.last_backup_status = status
    session.flush()
    alerts.for_finished_job(session, job)
    return job
