"""Recovery points."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from kluis.vault import points
from kluis.vault.api.deps import READER, get_ctx, one_of
from kluis.vault.auth import Principal
from kluis.vault.context import VaultContext

router = APIRouter(tags=["points"])


@router.get("/points", summary="List recovery points")
def list_points(
    item_id: str | None = None,
    machine_id: str | None = None,
    state: str | None = Query(default="Available", description="Available, Expired, or empty for all"),
    limit: int = Query(default=500, ge=1, le=5000),
    ctx: VaultContext = Depends(get_ctx),
    _p: Principal = Depends(READER),
) -> list[dict[str, Any]]:
    """Recovery points, newest first."""
    with ctx.db.read() as s:
        wanted = one_of("state", state or None, points.POINT_STATES)
        return points.list_points(s, item_id=item_id, machine_id=machine_id, state=wanted, limit=limit)


@router.get("/points/{point_id}", summary="Show a recovery point")
def show_point(
    point_id: str, ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(READER)
) -> dict[str, Any]:
    """One recovery point with its plaintext header."""
    with ctx.db.read() as s:
        return points.point_dict(points.get_point(s, point_id))
