"""Jobs: creation, the one-backup-per-item rule, cancelling, failing and expiring.

Agent jobs (Backup, Restore) wait in the queue until the machine's agent claims
them (long poll); vault jobs (Retention, GarbageCollect) run in the vault process
that holds the scheduler lease; configuration jobs (ConfigureBackup, DisableBackup,
DeleteBackupData, Undelete) record a change that happened at once.

Cancelling follows the seeds' Jobs table, each refusal with its own code: a type
that cannot be cancelled (JobCancelNotSupported), a job that is nearly done or
already being cancelled (JobNotCancellable), a job that is not running
(JobNotInProgress); a cancel the agent could not carry out is recorded on the job
as JobCancelFailed.

What the agent does with its jobs (claiming them, reporting progress and results) is in
:mod:`kluis.vault.agent_jobs`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kluis.catalog import KluisError, lookup
from kluis.vault import alerts
from kluis.vault.config import VaultConfig
from kluis.vault.db.models import ACTIVE_JOB_STATUSES, Job, Machine, ProtectedItem, RecoveryPoint
from kluis.vault.db.types import utcnow

AGENT_TYPES = ("Backup", "Restore")
VAULT_TYPES = ("Retention", "GarbageCollect")
INSTANT_TYPES = ("ConfigureBackup", "DisableBackup", "DeleteBackupData", "Undelete")
JOB_TYPES = AGENT_TYPES + VAULT_TYPES + INSTANT_TYPES
CANCELLABLE_TYPES = AGENT_TYPES
STATUSES = ("InProgress", "Completed", "CompletedWithWarnings", "Failed", "Cancelling", "Cancelled")
FINAL_STATUSES = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
BACKUP_PHASES = ("Take snapshot", "Transfer data to vault")
RESTORE_PHASES = ("Prepare restore", "Transfer data from vault")
# Past this a job is committing its result and is no longer cancelled.
NEARLY_DONE_PERCENT = 95.0
ON_DEMAND_RETENTION = dt.timedelta(days=30)
MAX_RETENTION = dt.timedelta(days=99 * 366)


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def job_dict(job: Job) -> dict[str, Any]:
    """The API shape of a job."""
    return {
        "id": job.id,
        "type": job.type,
        "status": job.status,
        "trigger": job.trigger,
        "item_id": job.item_id,
        "machine_id": job.machine_id,
        "phase": job.phase,
        "progress": job.progress or {},
        "params": job.params or {},
        "result": job.result or {},
        "error": job.error,
        "warnings": job.warnings or [],
        "cancel_error": job.cancel_error,
        "created_by": job.created_by,
        "created_at": iso(job.created_at),
        "not_before": iso(job.not_before),
        "dispatched_at": iso(job.dispatched_at),
        "updated_at": iso(job.updated_at),
        "ended_at": iso(job.ended_at),
        "cancel_requested_at": iso(job.cancel_requested_at),
        "retain_until": iso(job.retain_until),
    }


def catalog_dict(
    code: str,
    params: dict[str, Any] | None = None,
    message: str | None = None,
    detail: str | None = None,
) -> dict[str, Any]:
    """An error or warning as the catalog states it, with its parameters and detail.

    ``detail`` is the specific fact the reporter added (a path, the numbers that did not
    fit); the catalog's message shows it in brackets. A code this vault does not know (a
    newer agent) keeps the agent's own message.
    """
    params = {str(k): v for k, v in (params or {}).items()}
    detail = str(detail)[:2000] if detail else None
    try:
        lookup(code)
    except LookupError:
        return {
            "code": code,
            "severity": "error",
            "message": message or code,
            "causes": [],
            "actions": [],
            "detail": detail,
        }
    out = KluisError(code, detail=detail, **params).to_dict()
    out["params"] = params
    return out


def error_dict(error: KluisError) -> dict[str, Any]:
    """A KluisError as a job record keeps it (code, parameters, detail)."""
    return catalog_dict(error.code, error.params, detail=error.detail)


def get_job(session: Session, job_id: str) -> Job:
    """A job by id; ResourceNotFound otherwise."""
    job = session.get(Job, job_id)
    if job is None:
        raise KluisError("ResourceNotFound", kind="job", name=job_id)
    return job


def record_instant(
    session: Session,
    job_type: str,
    item: ProtectedItem,
    created_by: str,
    params: dict[str, Any] | None = None,
) -> Job:
    """A configuration job that completed when it was made."""
    now = utcnow()
    job = Job(
        type=job_type,
        status="Completed",
        trigger="OnDemand",
        item_id=item.id,
        machine_id=item.machine_id,
        params=params or {},
        created_by=created_by,
        created_at=now,
        updated_at=now,
        ended_at=now,
        progress={"percent": 100.0},
    )
    session.add(job)
    session.flush()
    return job


def running_backup(session: Session, item_id: str) -> Job | None:
    """The backup job holding an item's slot, if any."""
    return session.scalar(
        select(Job).where(Job.item_id == item_id, Job.type == "Backup", Job.status.in_(ACTIVE_JOB_STATUSES))
    )


def _in_progress_error(session: Session, item: ProtectedItem) -> KluisError:
    running = running_backup(session, item.id)
    return KluisError(
        "UserErrorBackupOperationInProgress", item=item.name, job=running.id if running else "?"
    )


def start_backup(
    session: Session,
    item: ProtectedItem,
    *,
    trigger: str,
    created_by: str,
    retain_until: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
    scheduled_for: dt.datetime | None = None,
) -> Job:
    """Queue a backup of an item; UserErrorBackupOperationInProgress when one is running.

    The database's partial unique index decides, so two vault processes racing to
    start a backup of one item cannot both succeed.
    """
    now = utcnow()
    params: dict[str, Any] = {}
    if scheduled_for is not None:
        params["scheduled_for"] = scheduled_for.isoformat()
    job = Job(
        type="Backup",
        status="InProgress",
        trigger=trigger,
        item_id=item.id,
        machine_id=item.machine_id,
        params=params,
        created_by=created_by,
        created_at=now,
        updated_at=now,
        not_before=not_before or now,
        retain_until=retain_until,
        progress={},
    )
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        raise _in_progress_error(session, item) from None
    return job


def record_failed_start(
    session: Session,
    item: ProtectedItem,
    error: KluisError,
    *,
    trigger: str,
    created_by: str | None = None,
) -> Job:
    """A backup that could not start, kept in the job history (as the seeds' job list shows it).

    Alerts follow the usual rules: none when another job of the item was in progress.
    """
    now = utcnow()
    if created_by is None:
        created_by = "scheduler" if trigger == "Scheduled" else ""
    job = Job(
        type="Backup",
        status="Failed",
        trigger=trigger,
        item_id=item.id,
        machine_id=item.machine_id,
        created_by=created_by,
        created_at=now,
        updated_at=now,
        ended_at=now,
        params={},
        progress={},
        error=error_dict(error),
    )
    session.add(job)
    session.flush()
    alerts.for_finished_job(session, job)
    return job


def on_demand_backup(
    session: Session,
    config: VaultConfig,
    item: ProtectedItem,
    *,
    created_by: str,
    retain_until: dt.datetime | None,
) -> Job:
    """An on-demand backup: item must be protected, daily limit, retain-until (default 30 days)."""
    now = utcnow()
    if item.state != "Protected":
        raise KluisError("UserErrorBcmDatasourceNotPresent", item=item.name, state=item.state)
    if retain_until is None:
        retain_until = now + ON_DEMAND_RETENTION
    if retain_until.tzinfo is None:
        raise KluisError(
            "ValidationFailed", reason="retain_until needs a time zone (e.g. 2030-01-01T00:00:00Z)"
        )
    if retain_until <= now + dt.timedelta(hours=1):
        raise KluisError("ValidationFailed", reason="retain_until must be at least an hour in the future")
    if retain_until > now + MAX_RETENTION:
        raise KluisError("ValidationFailed", reason="retain_until may be at most 99 years ahead")
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    today = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(
            Job.item_id == item.id,
            Job.type == "Backup",
            Job.trigger == "OnDemand",
            Job.created_at >= day_start,
            Job.status != "Failed",
        )
    )
    if (today or 0) >= config.on_demand_daily_limit:
        raise KluisError(
            "OnDemandBackupLimitReached", item=item.name, count=today, limit=config.on_demand_daily_limit
        )
    return start_backup(session, item, trigger="OnDemand", created_by=created_by, retain_until=retain_until)


def start_restore(
    session: Session,
    item: ProtectedItem,
    point: RecoveryPoint,
    *,
    created_by: str,
    target_machine_id: str | None,
    target_path: str | None,
    paths: list[str],
    conflict: str = "copy",
) -> Job:
    """Queue a restore of a recovery point to its own or another machine.

    ``conflict`` says what happens to files already at the target: overwrite, skip or copy.
    """
    if conflict not in ("overwrite", "skip", "copy"):
        raise KluisError("ValidationFailed", reason="conflict must be overwrite, skip or copy")
    if item.state not in ("Protected", "ProtectionStopped"):
        raise KluisError("ItemStateInvalid", item=item.name, state=item.state, action="restored")
    if point.state != "Available" or point.item_id != item.id:
        raise KluisError("RecoveryPointNotFound", point=point.id)
    target = target_machine_id or item.machine_id
    machine = session.get(Machine, target)
    if machine is None or machine.deleted_at is not None:
        raise KluisError("ResourceNotFound", kind="machine", name=target)
    if target_path is not None and not target_path.startswith("/"):
        raise KluisError("ValidationFailed", reason="target_path must be an absolute path")
    if any(not p or "\x00" in p for p in paths):
        raise KluisError("ValidationFailed", reason="paths must be non-empty strings")
    now = utcnow()
    job = Job(
        type="Restore",
        status="InProgress",
        trigger="OnDemand",
        item_id=item.id,
        machine_id=target,
        params={
            "point_id": point.id,
            "source_machine_id": item.machine_id,
            "target_path": target_path,
            "paths": paths,
            "conflict": conflict,
            "overwrite": conflict == "overwrite",
        },
        created_by=created_by,
        created_at=now,
        updated_at=now,
        not_before=now,
        progress={},
    )
    session.add(job)
    session.flush()
    return job


def cancel(session: Session, job_id: str) -> Job:
    """Ask a job to stop: at once when no agent has it yet, else via the agent."""
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        raise KluisError("ResourceNotFound", kind="job", name=job_id)
    if job.type not in CANCELLABLE_TYPES:
        raise KluisError("JobCancelNotSupported", job=job.id, kind=job.type)
    if job.status in FINAL_STATUSES:
        raise KluisError("JobNotInProgress", job=job.id, state=job.status)
    if job.status == "Cancelling":
        raise KluisError("JobNotCancellable", job=job.id, state="being cancelled")
    percent = float((job.progress or {}).get("percent") or 0.0)
    if (job.result or {}).get("point_id") or percent >= NEARLY_DONE_PERCENT:
        raise KluisError("JobNotCancellable", job=job.id, state="nearly done")
    now = utcnow()
    job.cancel_requested_at = now
    job.updated_at = now
    if job.dispatched_at is None:
        job.status = "Cancelled"
        job.ended_at = now
    else:
        job.status = "Cancelling"
    return job


def fail(session: Session, job: Job, error: KluisError) -> None:
    """End a job as Failed with a catalog error (vault-side decisions such as timeouts)."""
    now = utcnow()
    if job.status == "Cancelling":
        job.cancel_error = catalog_dict(
            "JobCancelFailed", {"job": job.id, "reason": "the agent did not confirm"}
        )
    job.status = "Failed"
    job.error = error_dict(error)
    job.ended_at = now
    job.updated_at = now
    if job.type == "Backup" and job.item_id:
        item = session.get(ProtectedItem, job.item_id)
        if item is not None:
            item.last_backup_status = "Failed"
    session.flush()
    alerts.for_finished_job(session, job)


def expire_stale(session: Session, config: VaultConfig, now: dt.datetime) -> int:
    """Fail agent jobs no agent picked up, or whose agent stopped reporting."""
    count = 0
    never_claimed = session.scalars(
        select(Job).where(
            Job.type.in_(AGENT_TYPES),
            Job.status == "InProgress",
            Job.dispatched_at.is_(None),
            # The agent gets the whole timeout from when the job existed and was due: a job
            # created late for a slot long past must not fail minutes after it was queued.
            Job.not_before < now - dt.timedelta(seconds=config.dispatch_timeout),
            Job.created_at < now - dt.timedelta(seconds=config.dispatch_timeout),
        )
    ).all()
    for job in never_claimed:
        machine = session.get(Machine, job.machine_id) if job.machine_id else None
        seen = machine.last_heartbeat_at.isoformat() if machine and machine.last_heartbeat_at else "never"
        fail(
            session,
            job,
            KluisError(
                "UserErrorGuestAgentStatusUnavailable",
                machine=machine.hostname if machine else "?",
                last_seen=seen,
            ),
        )
        count += 1
    stalled = session.scalars(
        select(Job).where(
            Job.type.in_(AGENT_TYPES),
            Job.status.in_(ACTIVE_JOB_STATUSES),
            Job.dispatched_at.is_not(None),
            Job.updated_at < now - dt.timedelta(seconds=config.stall_timeout),
        )
    ).all()
    for job in stalled:
        machine = session.get(Machine, job.machine_id) if job.machine_id else None
        minutes = config.stall_timeout // 60
        item = session.get(ProtectedItem, job.item_id) if job.item_id else None
        if (
            job.type == "Backup"
            and job.phase == BACKUP_PHASES[0]
            and item is not None
            and item.kind == "disks"
        ):
            # The agent went silent while the extension's snapshot task ran: its outcome (and
            # whether the guest was left frozen) is unknown, which the seeds code separately.
            since = job.dispatched_at or job.updated_at
            error = KluisError(
                "GuestAgentSnapshotTaskStatusError",
                machine=machine.hostname if machine else "?",
                seconds=round((now - since).total_seconds()) if since else config.stall_timeout,
            )
        else:
            error = KluisError(
                "JobAgentTimeout",
                job=job.id,
                machine=machine.hostname if machine else "?",
                reason=f"stopped reporting progress for more than {minutes} minutes",
            )
        fail(session, job, error)
        count += 1
    return count


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    job_type: str | None = None,
    item_id: str | None = None,
    machine_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Jobs, newest first, filtered."""
    query = select(Job)
    if status:
        query = query.where(Job.status == status)
    if job_type:
        query = query.where(Job.type == job_type)
    if item_id:
        query = query.where(Job.item_id == item_id)
    if machine_id:
        query = query.where(Job.machine_id == machine_id)
    query = query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    return [job_dict(j) for j in session.scalars(query)]
