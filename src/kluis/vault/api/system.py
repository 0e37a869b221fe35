"""Health, vault information, the caller's identity and vault credentials files."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from kluis import __version__
from kluis.vault import credentials, lease
from kluis.vault.api.deps import READER, get_ctx, get_principal, require
from kluis.vault.auth import Principal, Role
from kluis.vault.context import VaultContext
from kluis.vault.db.migrate import SCHEDULER_LEASE

router = APIRouter(tags=["vault"])


@router.get("/health", summary="Liveness check (no token needed)")
def health(ctx: VaultContext = Depends(get_ctx)) -> dict[str, Any]:
    """Whether the vault answers, and which vault it is."""
    return {
        "status": "ok",
        "vault_id": ctx.config.vault_id,
        "vault_name": ctx.config.vault_name,
        "version": __version__,
    }


@router.get("/vault", summary="Vault settings and the scheduler lease")
def vault_info(ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(READER)) -> dict[str, Any]:
    """The vault's identity, limits and who runs the scheduler."""
    held = lease.info(ctx.db, SCHEDULER_LEASE)
    cfg = ctx.config
    return {
        "vault_id": cfg.vault_id,
        "vault_name": cfg.vault_name,
        "url": cfg.url,
        "version": __version__,
        "database": ctx.db.dialect,
        "max_machines": cfg.max_machines,
        "on_demand_daily_limit": cfg.on_demand_daily_limit,
        "pack_size_limit": cfg.pack_size_limit,
        "heartbeat_interval": cfg.heartbeat_interval,
        "unresponsive_after": cfg.unresponsive_after,
        "latest_agent_version": cfg.latest_agent_version,
        "process": ctx.holder,
        "scheduler": {
            "holder": held.holder if held.held() else None,
            "acquired_at": held.acquired_at.isoformat() if held.acquired_at and held.held() else None,
            "expires_at": held.expires_at.isoformat() if held.expires_at and held.held() else None,
            "this_process": held.held() and held.holder == ctx.holder,
        },
    }


@router.get("/me", summary="Who the token belongs to")
def me(principal: Principal = Depends(get_principal)) -> dict[str, Any]:
    """The caller: a user with a role, or a machine."""
    return {
        "kind": principal.kind,
        "name": principal.name,
        "role": principal.role.label if principal.role else None,
        "user_id": principal.user_id,
        "machine_id": principal.machine_id,
    }


@router.post("/credentials", summary="Make a new vault credentials file (supersedes older ones)")
def make_credentials(
    ctx: VaultContext = Depends(get_ctx),
    principal: Principal = Depends(require(Role.OPERATOR, "make vault credentials")),
) -> dict[str, Any]:
    """A fresh credentials file, valid for 10 days; the content is shown only now."""
    with ctx.db.write() as s:
        creds = credentials.issue(s, ctx.config, created_by=principal.name)
    return {
        "file_name": credentials.file_name(ctx.config.vault_name),
        "content": creds.to_json(),
        "expires_at": creds.expires_at.isoformat(),
    }
