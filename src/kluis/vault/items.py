"""Protected items and their protection state.

States::

    Protected --stop(retain)--> ProtectionStopped --resume--> Protected
    Protected/ProtectionStopped --stop(delete)--> SoftDeleted --undelete--> ProtectionStopped
    SoftDeleted --14 days (retention job)--> Deleted

Stopping with "retain" keeps every recovery point until protection resumes or the
data is deleted; stopping with "delete" keeps the points 14 days more in case it
was a mistake (soft delete), then the retention job expires them all.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.vault import jobs, policies
from kluis.vault.db.models import Job, Machine, ProtectedItem
from kluis.vault.db.types import utcnow

KINDS = ("files", "disks")
STATES = ("Protected", "ProtectionStopped", "SoftDeleted", "Deleted")
SOFT_DELETE_FOR = dt.timedelta(days=14)
MAX_PATHS = 1000
_DISK = re.compile(r"^(all|/dev/[A-Za-z0-9/_.:-]{1,200}|[A-Za-z0-9_.:-]{1,200})$")


def item_dict(item: ProtectedItem) -> dict[str, Any]:
    """The API shape of an item."""
    return {
        "id": item.id,
        "machine_id": item.machine_id,
        "name": item.name,
        "kind": item.kind,
        "spec": item.spec,
        "policy_id": item.policy_id,
        "state": item.state,
        "created_at": item.created_at.isoformat(),
        "stopped_at": item.stopped_at.isoformat() if item.stopped_at else None,
        "purge_after": item.purge_after.isoformat() if item.purge_after else None,
        "last_backup_at": item.last_backup_at.isoformat() if item.last_backup_at else None,
        "last_backup_status": item.last_backup_status,
    }


def _invalid(reason: str) -> KluisError:
    return KluisError("ValidationFailed", reason=reason)


def check_spec(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Validate what an item covers; returns the normalised spec."""
    if kind not in KINDS:
        raise _invalid(f"item kind must be one of {', '.join(KINDS)}")
    if kind == "files":
        paths = spec.get("paths") or []
        excludes = spec.get("exclude") or []
        if not isinstance(paths, list) or not paths or len(paths) > MAX_PATHS:
            raise _invalid(f"a files item needs 1 to {MAX_PATHS} paths")
        for p in [*paths, *excludes]:
            if not isinstance(p, str) or not p or "\x00" in p or len(p) > 4096:
                raise _invalid("paths and exclusions must be non-empty strings")
        for p in paths:
            if not p.startswith("/"):
                raise _invalid(f"path {p!r} must be absolute")
        if set(spec) - {"paths", "exclude"}:
            raise _invalid("a files item takes paths and exclude only")
        return {"paths": list(dict.fromkeys(paths)), "exclude": list(excludes)}
    disks = spec.get("disks")
    if not isinstance(disks, list) or not 1 <= len(disks) <= 64:
        raise _invalid("a disks item needs 1 to 64 disks: block devices (/dev/...) or one VM name")
    for d in disks:
        if not isinstance(d, str) or not _DISK.match(d) or d == "all":
            raise _invalid(f"disk {d!r} is not a block device or VM name")
    # The agent backs up the block devices of its own machine, or the disks of one VM.
    if len(disks) > 1 and not all(d.startswith("/dev/") for d in disks):
        raise _invalid("give block devices, or one VM name, not both or several VMs")
    if set(spec) - {"disks"}:
        raise _invalid("a disks item takes disks only")
    return {"disks": list(dict.fromkeys(disks))}


def get_item(session: Session, item_id: str, *, lock: bool = False) -> ProtectedItem:
    """An item by id (any state but Deleted)."""
    query = select(ProtectedItem).where(ProtectedItem.id == item_id)
    if lock:
        query = query.with_for_update()
    item = session.scalar(query)
    if item is None or item.state == "Deleted":
        raise KluisError("ResourceNotFound", kind="protected item", name=item_id)
    return item


def enable(
    session: Session,
    *,
    machine_id: str,
    name: str,
    kind: str,
    spec: dict[str, Any],
    policy_ref: str,
    created_by: str,
) -> tuple[ProtectedItem, Job]:
    """Enable protection: a new item under a policy, and its ConfigureBackup job."""
    name = name.strip()
    if not name or len(name) > 200:
        raise _invalid("an item name must be 1 to 200 characters")
    clean = check_spec(kind, spec)
    machine = session.get(Machine, machine_id)
    if machine is None or machine.deleted_at is not None:
        raise KluisError("ResourceNotFound", kind="machine", name=machine_id)
    policy = policies.get_policy(session, policy_ref)
    policies.check_for_item(policy, kind)
    now = utcnow()
    item = ProtectedItem(
        machine_id=machine.id,
        name=name,
        kind=kind,
        spec=clean,
        policy_id=policy.id,
        state="Protected",
        created_at=now,
        last_slot_at=now,  # the first scheduled run is the next one, not a past one
    )
    try:
        with session.begin_nested():
            session.add(item)
            session.flush()
    except IntegrityError:
        raise KluisError("ResourceExists", kind="protected item", name=name) from None
    job = jobs.record_instant(session, "ConfigureBackup", item, created_by, {"policy_id": policy.id})
    return item, job


def change_policy(
    session: Session, item_id: str, policy_ref: str, created_by: str
) -> tuple[ProtectedItem, Job]:
    """Move a protected item to another policy."""
    item = get_item(session, item_id, lock=True)
    if item.state != "Protected":
        raise KluisError("ItemStateInvalid", item=item.name, state=item.state, action="given another policy")
    policy = policies.get_policy(session, policy_ref)
    policies.check_for_item(policy, item.kind)
    item.policy_id = policy.id
    return item, jobs.record_instant(session, "ConfigureBackup", item, created_by, {"policy_id": policy.id})


def stop(session: Session, item_id: str, *, delete_data: bool, created_by: str) -> tuple[ProtectedItem, Job]:
    """Stop protection, keeping the data or soft-deleting it for 14 days."""
    item = get_item(session, item_id, lock=True)
    now = utcnow()
    if delete_data:
        if item.state not in ("Protected", "ProtectionStopped"):
            raise KluisError("ItemStateInvalid", item=item.name, state=item.state, action="deleted")
        item.state = "SoftDeleted"
        item.stopped_at = item.stopped_at or now
        item.purge_after = now + SOFT_DELETE_FOR
        job_type = "DeleteBackupData"
    else:
        if item.state != "Protected":
            raise KluisError("ItemStateInvalid", item=item.name, state=item.state, action="stopped")
        item.state = "ProtectionStopped"
        item.stopped_at = now
        job_type = "DisableBackup"
    params = {"delete_data": delete_data}
    if item.purge_after:
        params["purge_after"] = item.purge_after.isoformat()  # type: ignore[assignment]
    return item, jobs.record_instant(session, job_type, item, created_by, params)


def undelete(session: Session, item_id: str, created_by: str) -> tuple[ProtectedItem, Job]:
    """Bring a soft-deleted item back (protection stays stopped until resumed)."""
    item = get_item(session, item_id, lock=True)
    if item.state != "SoftDeleted":
        raise KluisError("ItemStateInvalid", item=item.name, state=item.state, action="undeleted")
    item.state = "ProtectionStopped"
    item.purge_after = None
    return item, jobs.record_instant(session, "Undelete", item, created_by)


def resume(
    session: Session, item_id: str, policy_ref: str | None, created_by: str
) -> tuple[ProtectedItem, Job]:
    """Resume protection of a stopped item under a policy (its last one by default)."""
    item = get_item(session, item_id, lock=True)
    if item.state != "ProtectionStopped":
        raise KluisError("ItemStateInvalid", item=item.name, state=item.state, action="resumed")
    ref = policy_ref or item.policy_id
    if ref is None:
        raise _invalid("give the policy to resume protection with")
    policy = policies.get_policy(session, ref)
    policies.check_for_item(policy, item.kind)
    item.state = "Protected"
    item.policy_id = policy.id
    item.stopped_at = None
    item.last_slot_at = utcnow()
    return item, jobs.record_instant(session, "ConfigureBackup", item, created_by, {"policy_id": policy.id})


def list_items(
    session: Session, *, machine_id: str | None = None, state: str | None = None
) -> list[dict[str, Any]]:
    """Items (not the purged ones unless asked for), by machine and name."""
    query = select(ProtectedItem).order_by(ProtectedItem.machine_id, ProtectedItem.name)
    if machine_id:
        query = query.where(ProtectedItem.machine_id == machine_id)
    query = (
        query.where(ProtectedItem.state == state) if state else query.where(ProtectedItem.state != "Deleted")
    )
    return [item_dict(i) for i in session.scalars(query)]
