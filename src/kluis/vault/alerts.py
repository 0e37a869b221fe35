"""Alerts: a failed backup or restore raises one, unless the cause needs no action.

As in the seeds, a backup that failed because another backup of the item was
running (UserErrorBackupOperationInProgress) or because the item is no longer
actively protected (UserErrorBcmDatasourceNotPresent) raises no alert: the first
resolves itself, the second is the result of a decision someone made. Repeated
failures with the same code on the same item update one active alert instead of
piling up; a later successful backup of the item resolves it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.vault.db.models import Alert, Job
from kluis.vault.db.types import utcnow

NO_ALERT_CODES = frozenset({"UserErrorBackupOperationInProgress", "UserErrorBcmDatasourceNotPresent"})
ALERTING_JOB_TYPES = ("Backup", "Restore")


def alert_dict(alert: Alert) -> dict[str, Any]:
    """The API shape of an alert."""
    return {
        "id": alert.id,
        "code": alert.code,
        "severity": alert.severity,
        "status": alert.status,
        "machine_id": alert.machine_id,
        "item_id": alert.item_id,
        "job_id": alert.job_id,
        "details": alert.details,
        "created_at": alert.created_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }


def for_finished_job(session: Session, job: Job) -> Alert | None:
    """Raise (or update) the alert a finished job calls for, or resolve old ones on success."""
    if job.type not in ALERTING_JOB_TYPES:
        return None
    if job.status in ("Completed", "CompletedWithWarnings") and job.type == "Backup" and job.item_id:
        for alert in session.scalars(
            select(Alert).where(Alert.item_id == job.item_id, Alert.status == "Active")
        ):
            if (alert.details or {}).get("job_type") == "Backup":
                alert.status = "Resolved"
                alert.resolved_at = utcnow()
        return None
    if job.status != "Failed" or not job.error:
        return None
    code = str(job.error.get("code", ""))
    if code in NO_ALERT_CODES:
        return None
    existing = session.scalar(
        select(Alert).where(
            Alert.status == "Active",
            Alert.code == code,
            Alert.item_id == job.item_id if job.item_id else Alert.machine_id == job.machine_id,
        )
    )
    details = {"job_type": job.type, "error": job.error}
    if existing is not None:
        count = int((existing.details or {}).get("occurrences", 1)) + 1
        existing.details = {**details, "occurrences": count}
        existing.job_id = job.id
        return existing
    alert = Alert(
        code=code,
        severity="error",
        machine_id=job.machine_id,
        item_id=job.item_id,
        job_id=job.id,
        details={**details, "occurrences": 1},
    )
    session.add(alert)
    return alert


def list_alerts(session: Session, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Alerts, newest first, optionally only Active or Resolved ones."""
    query = select(Alert).order_by(Alert.created_at.desc()).limit(limit)
    if status:
        query = query.where(Alert.status == status)
    return [alert_dict(a) for a in session.scalars(query)]


def resolve(session: Session, alert_id: str) -> dict[str, Any]:
    """Mark an alert resolved by hand."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise KluisError("ResourceNotFound", kind="alert", name=alert_id)
    if alert.status != "Resolved":
        alert.status = "Resolved"
        alert.resolved_at = utcnow()
    return alert_dict(alert)
