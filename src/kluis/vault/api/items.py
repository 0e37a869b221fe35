"""Protected items: enable, change, stop, undelete, resume protection; on-demand backup and restore."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from kluis.catalog import KluisError
from kluis.vault import items, jobs, points
from kluis.vault.api.deps import READER, get_ctx, one_of, require
from kluis.vault.auth import Principal, Role
from kluis.vault.context import VaultContext

router = APIRouter(prefix="/items", tags=["items"])
CONTRIBUTOR = require(Role.CONTRIBUTOR, "change protection")


class NewItem(BaseModel):
    """Enable protection of a file/folder set or of a machine's disks."""

    machine_id: str = Field(max_length=32)
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(description="files or disks")
    paths: list[str] | None = Field(default=None, max_length=1000, description="files: absolute paths")
    exclude: list[str] | None = Field(default=None, max_length=1000, description="files: patterns to skip")
    disks: list[str] | None = Field(
        default=None, max_length=64, description="disks: block devices (/dev/...) or one VM name"
    )
    policy: str = Field(description="policy id or name")


class PolicyChange(BaseModel):
    """Move an item to another policy."""

    policy: str


class StopRequest(BaseModel):
    """Stop protection; with delete_data the data is soft-deleted for 14 days."""

    delete_data: bool = False


class ResumeRequest(BaseModel):
    """Resume protection (with its last policy unless another is named)."""

    policy: str | None = None


class BackupRequest(BaseModel):
    """An on-demand backup; its recovery point is kept until retain_until (default 30 days)."""

    retain_until: dt.datetime | None = None


class RestoreRequest(BaseModel):
    """Restore a recovery point (to the item's machine unless another is named)."""

    point_id: str = Field(max_length=128)
    target_machine_id: str | None = Field(default=None, max_length=32)
    target_path: str | None = Field(default=None, max_length=4096)
    paths: list[str] = Field(default_factory=list, max_length=10000)
    overwrite: bool = False
    # What to do with files already at the target; without it, `overwrite` decides (older clients).
    conflict: Literal["overwrite", "skip", "copy"] | None = None


def _with_job(item_d: dict[str, Any], job: Any) -> dict[str, Any]:
    return {**item_d, "job": jobs.job_dict(job)}


@router.get("", summary="List protected items")
def list_items(
    machine_id: str | None = None,
    state: str | None = None,
    ctx: VaultContext = Depends(get_ctx),
    _p: Principal = Depends(READER),
) -> list[dict[str, Any]]:
    """Items, optionally of one machine or in one state."""
    with ctx.db.read() as s:
        return items.list_items(s, machine_id=machine_id, state=one_of("state", state, items.STATES))


@router.post("", status_code=201, summary="Enable protection")
def enable(
    body: NewItem, ctx: VaultContext = Depends(get_ctx), p: Principal = Depends(CONTRIBUTOR)
) -> dict[str, Any]:
    """A new protected item and its ConfigureBackup job."""
    spec: dict[str, Any] = {}
    if body.kind == "files":
        spec = {"paths": body.paths or [], "exclude": body.exclude or []}
    elif body.kind == "disks":
        spec = {"disks": body.disks or []}
    with ctx.db.write() as s:
        item, job = items.enable(
            s,
            machine_id=body.machine_id,
            name=body.name,
            kind=body.kind,
            spec=spec,
            policy_ref=body.policy,
            created_by=p.name,
        )
        return _with_job(items.item_dict(item), job)


@router.get("/{item_id}", summary="Show a protected item")
def show(
    item_id: str, ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(READER)
) -> dict[str, Any]:
    """One item with its state."""
    with ctx.db.read() as s:
        return items.item_dict(items.get_item(s, item_id))


@router.patch("/{item_id}", summary="Change an item's policy")
def change(
    item_id: str,
    body: PolicyChange,
    ctx: VaultContext = Depends(get_ctx),
    p: Principal = Depends(CONTRIBUTOR),
) -> dict[str, Any]:
    """The item under its new policy."""
    with ctx.db.write() as s:
        item, job = items.change_policy(s, item_id, body.policy, p.name)
        return _with_job(items.item_dict(item), job)


@router.post("/{item_id}/stop", summary="Stop protection, retaining or deleting data")
def stop(
    item_id: str, body: StopRequest, ctx: VaultContext = Depends(get_ctx), p: Principal = Depends(CONTRIBUTOR)
) -> dict[str, Any]:
    """ProtectionStopped, or SoftDeleted for 14 days with delete_data."""
    with ctx.db.write() as s:
        item, job = items.stop(s, item_id, delete_data=body.delete_data, created_by=p.name)
        return _with_job(items.item_dict(item), job)


@router.post("/{item_id}/undelete", summary="Undelete soft-deleted data")
def undelete(
    item_id: str, ctx: VaultContext = Depends(get_ctx), p: Principal = Depends(CONTRIBUTOR)
) -> dict[str, Any]:
    """The item back in ProtectionStopped, its recovery points kept."""
    with ctx.db.write() as s:
        item, job = items.undelete(s, item_id, p.name)
        return _with_job(items.item_dict(item), job)


@router.post("/{item_id}/resume", summary="Resume protection")
def resume(
    item_id: str,
    body: ResumeRequest,
    ctx: VaultContext = Depends(get_ctx),
    p: Principal = Depends(CONTRIBUTOR),
) -> dict[str, Any]:
    """The item Protected again under a policy."""
    with ctx.db.write() as s:
        item, job = items.resume(s, item_id, body.policy, p.name)
        return _with_job(items.item_dict(item), job)


@router.post("/{item_id}/backup", status_code=202, summary="Run an on-demand backup")
def backup_now(
    item_id: str,
    body: BackupRequest,
    ctx: VaultContext = Depends(get_ctx),
    p: Principal = Depends(require(Role.OPERATOR, "run on-demand backups")),
) -> dict[str, Any]:
    """The queued backup job; UserErrorBackupOperationInProgress when one runs.

    A refused duplicate is also kept in the job history as a Failed backup with that code
    (and raises no alert), so the job list shows the trigger that could not start.
    """
    try:
        with ctx.db.write() as s:
            item = items.get_item(s, item_id, lock=True)
            job = jobs.on_demand_backup(
                s, ctx.config, item, created_by=p.name, retain_until=body.retain_until
            )
            out = jobs.job_dict(job)
    except KluisError as exc:
        if exc.code != "UserErrorBackupOperationInProgress":
            raise
        # The refusal rolled its own transaction back: record it in a new one, then answer 409.
        with ctx.db.write() as s:
            jobs.record_failed_start(
                s, items.get_item(s, item_id), exc, trigger="OnDemand", created_by=p.name
            )
        raise
    ctx.notifier.notify(job.machine_id)
    return out


@router.post("/{item_id}/restore", status_code=202, summary="Restore a recovery point")
def restore(
    item_id: str,
    body: RestoreRequest,
    ctx: VaultContext = Depends(get_ctx),
    p: Principal = Depends(require(Role.OPERATOR, "run restores")),
) -> dict[str, Any]:
    """The queued restore job."""
    with ctx.db.write() as s:
        item = items.get_item(s, item_id)
        point = points.get_point(s, body.point_id)
        job = jobs.start_restore(
            s,
            item,
            point,
            created_by=p.name,
            target_machine_id=body.target_machine_id,
            target_path=body.target_path,
            paths=body.paths,
            conflict=body.conflict or ("overwrite" if body.overwrite else "copy"),
        )
        out = jobs.job_dict(job)
    ctx.notifier.notify(job.machine_id)
    return out
