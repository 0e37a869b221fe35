"""Backup policies: a schedule (``schedule.Schedule``) and a retention rule (``retention.RetentionRule``).

The ranges are the ones those modules check (daily/weekly runs at up to three times,
hourly every 4/6/8/12 h in a window; retention 1-9999 days, 1-5163 weeks, 1-1188
months, 1-99 years; instant recovery points 1-5 days). A policy used by disk items
must also leave room for the 18 instant recovery points a machine may hold.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.vault.db.models import Policy, ProtectedItem
from kluis.vault.db.types import utcnow
from kluis.vault.retention import RetentionRule, check_against_schedule
from kluis.vault.schedule import Schedule

MAX_NAME = 200


def parse(schedule: Any, retention: Any) -> tuple[Schedule, RetentionRule]:
    """Validate a schedule and retention pair from their JSON forms."""
    sched = Schedule.from_dict(schedule)
    rule = RetentionRule.from_dict(retention)
    check_against_schedule(rule, sched, instant_points=False)
    return sched, rule


def loaded(policy: Policy) -> tuple[Schedule, RetentionRule]:
    """The schedule and rule a stored policy holds."""
    return Schedule.from_dict(policy.schedule), RetentionRule.from_dict(policy.retention)


def policy_dict(policy: Policy, items: int | None = None) -> dict[str, Any]:
    """The API shape of a policy."""
    out = {
        "id": policy.id,
        "name": policy.name,
        "schedule": policy.schedule,
        "retention": policy.retention,
        "timezone": policy.timezone,
        "created_at": policy.created_at.isoformat(),
        "updated_at": policy.updated_at.isoformat(),
    }
    if items is not None:
        out["items"] = items
    return out


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise KluisError("ValidationFailed", reason=f"a policy name must be 1 to {MAX_NAME} characters")
    return name


def get_policy(session: Session, ref: str) -> Policy:
    """A policy by id or name."""
    policy = session.get(Policy, ref) or session.scalar(select(Policy).where(Policy.name == ref))
    if policy is None:
        raise KluisError("ResourceNotFound", kind="policy", name=ref)
    return policy


def check_for_item(policy: Policy, item_kind: str) -> None:
    """Refuse a policy for an item kind it cannot serve (disks keep instant points)."""
    sched, rule = loaded(policy)
    check_against_schedule(rule, sched, instant_points=item_kind == "disks")


def _item_count(session: Session, policy_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(ProtectedItem)
            .where(ProtectedItem.policy_id == policy_id, ProtectedItem.state == "Protected")
        )
        or 0
    )


def create(session: Session, name: str, schedule: Any, retention: Any) -> Policy:
    """A new policy; ResourceExists when the name is taken."""
    name = _check_name(name)
    sched, rule = parse(schedule, retention)
    now = utcnow()
    policy = Policy(
        name=name,
        timezone=sched.timezone,
        schedule=sched.to_dict(),
        retention=rule.to_dict(),
        instant_rp_days=rule.instant_days,
        created_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(policy)
            session.flush()
    except IntegrityError:
        raise KluisError("ResourceExists", kind="policy", name=name) from None
    return policy


def update(session: Session, ref: str, *, name: str | None, schedule: Any, retention: Any) -> Policy:
    """Change a policy; the items using it follow from the next scheduler tick."""
    policy = get_policy(session, ref)
    sched, rule = parse(
        schedule if schedule is not None else policy.schedule,
        retention if retention is not None else policy.retention,
    )
    kinds = set(
        session.scalars(
            select(ProtectedItem.kind).where(
                ProtectedItem.policy_id == policy.id, ProtectedItem.state == "Protected"
            )
        )
    )
    if "disks" in kinds:
        check_against_schedule(rule, sched, instant_points=True)
    if name is not None:
        policy.name = _check_name(name)
    policy.schedule = sched.to_dict()
    policy.retention = rule.to_dict()
    policy.timezone = sched.timezone
    policy.instant_rp_days = rule.instant_days
    policy.updated_at = utcnow()
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise KluisError("ResourceExists", kind="policy", name=name or policy.name) from None
    return policy


def delete(session: Session, ref: str) -> None:
    """Remove a policy no protected item uses."""
    policy = get_policy(session, ref)
    users = _item_count(session, policy.id)
    if users:
        raise KluisError("PolicyInUse", policy=policy.name, count=users)
    for item in session.scalars(select(ProtectedItem).where(ProtectedItem.policy_id == policy.id)):
        item.policy_id = None  # stopped or deleted items only remember it
    session.delete(policy)


def list_policies(session: Session) -> list[dict[str, Any]]:
    """Every policy with the number of protected items using it."""
    counts = dict(
        session.execute(
            select(ProtectedItem.policy_id, func.count())
            .where(ProtectedItem.state == "Protected")
            .group_by(ProtectedItem.policy_id)
        ).all()
    )
    return [
        policy_dict(p, counts.get(p.id, 0)) for p in session.scalars(select(Policy).order_by(Policy.name))
    ]
