"""Alerts raised by failed backups and restores."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from kluis.vault import alerts
from kluis.vault.api.deps import READER, get_ctx, one_of, require
from kluis.vault.auth import Principal, Role
from kluis.vault.context import VaultContext

router = APIRouter(tags=["alerts"])


@router.get("/alerts", summary="List alerts")
def list_alerts(
    status: str | None = Query(default=None, description="Active or Resolved"),
    ctx: VaultContext = Depends(get_ctx),
    _p: Principal = Depends(READER),
) -> list[dict[str, Any]]:
    """Alerts, newest first."""
    with ctx.db.read() as s:
        return alerts.list_alerts(s, one_of("status", status, ("Active", "Resolved")))


@router.post("/alerts/{alert_id}/resolve", summary="Mark an alert resolved")
def resolve_alert(
    alert_id: str,
    ctx: VaultContext = Depends(get_ctx),
    _p: Principal = Depends(require(Role.OPERATOR, "resolve alerts")),
) -> dict[str, Any]:
    """The resolved alert."""
    with ctx.db.write() as s:
        return alerts.resolve(s, alert_id)
