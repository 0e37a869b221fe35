"""Backup policies."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from kluis.vault import policies
from kluis.vault.api.deps import READER, get_ctx, require
from kluis.vault.auth import Principal, Role
from kluis.vault.context import VaultContext

router = APIRouter(prefix="/policies", tags=["policies"])
CONTRIBUTOR = require(Role.CONTRIBUTOR, "change policies")


class PolicyIn(BaseModel):
    """A policy: a ``schedule.Schedule`` and a ``retention.RetentionRule``, in their JSON shapes."""

    name: str = Field(min_length=1, max_length=200)
    schedule: dict[str, Any] = Field(
        description='e.g. {"kind": "daily", "timezone": "Europe/Amsterdam", "times": ["02:30"]}'
    )
    retention: dict[str, Any] = Field(description='e.g. {"daily": 30, "weekly": 12, "instant_days": 2}')


class PolicyChange(BaseModel):
    """Changes to a policy; omitted parts stay."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    schedule: dict[str, Any] | None = None
    retention: dict[str, Any] | None = None


@router.get("", summary="List policies")
def list_policies(
    ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(READER)
) -> list[dict[str, Any]]:
    """Every policy with the number of items using it."""
    with ctx.db.read() as s:
        return policies.list_policies(s)


@router.post("", status_code=201, summary="Create a policy")
def create(
    body: PolicyIn, ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(CONTRIBUTOR)
) -> dict[str, Any]:
    """The new policy."""
    with ctx.db.write() as s:
        return policies.policy_dict(policies.create(s, body.name, body.schedule, body.retention))


@router.get("/{policy_ref}", summary="Show a policy")
def show(
    policy_ref: str, ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(READER)
) -> dict[str, Any]:
    """One policy by id or name."""
    with ctx.db.read() as s:
        return policies.policy_dict(policies.get_policy(s, policy_ref))


@router.put("/{policy_ref}", summary="Change a policy")
def change(
    policy_ref: str,
    body: PolicyChange,
    ctx: VaultContext = Depends(get_ctx),
    _p: Principal = Depends(CONTRIBUTOR),
) -> dict[str, Any]:
    """The changed policy."""
    with ctx.db.write() as s:
        policy = policies.update(
            s, policy_ref, name=body.name, schedule=body.schedule, retention=body.retention
        )
        return policies.policy_dict(policy)


@router.delete("/{policy_ref}", status_code=204, summary="Delete an unused policy")
def delete(
    policy_ref: str, ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(CONTRIBUTOR)
) -> None:
    """Refused with PolicyInUse while protected items use it."""
    with ctx.db.write() as s:
        policies.delete(s, policy_ref)
