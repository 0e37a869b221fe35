"""Recovery points as the vault records them (created through the object API, see ``repo``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.vault.db.models import RecoveryPoint

POINT_STATES = ("Available", "Expired")  # Expired: past retention, its data waits for GC


def point_dict(point: RecoveryPoint) -> dict[str, Any]:
    """The API shape of a recovery point."""
    return {
        "id": point.id,
        "machine_id": point.machine_id,
        "item_id": point.item_id,
        "job_id": point.job_id,
        "kind": point.kind,
        "time": point.time.isoformat(),
        "recorded_at": point.recorded_at.isoformat(),
        "trigger": point.trigger,
        "header": point.header,
        "refs": point.refs_count,
        "size": point.size,
        "retain_until": point.retain_until.isoformat() if point.retain_until else None,
        "state": point.state,
        "expired_at": point.expired_at.isoformat() if point.expired_at else None,
    }


def get_point(session: Session, point_id: str) -> RecoveryPoint:
    """A recovery point by id; RecoveryPointNotFound otherwise."""
    point = session.get(RecoveryPoint, point_id)
    if point is None:
        raise KluisError("RecoveryPointNotFound", point=point_id)
    return point


def list_points(
    session: Session,
    *,
    item_id: str | None = None,
    machine_id: str | None = None,
    state: str | None = "Available",
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Recovery points, newest first."""
    query = select(RecoveryPoint).order_by(RecoveryPoint.time.desc()).limit(limit)
    if item_id:
        query = query.where(RecoveryPoint.item_id == item_id)
    if machine_id:
        query = query.where(RecoveryPoint.machine_id == machine_id)
    if state:
        query = query.where(RecoveryPoint.state == state)
    return [point_dict(p) for p in session.scalars(query)]
