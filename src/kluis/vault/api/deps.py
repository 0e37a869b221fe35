"""Request dependencies: the vault context, the caller, and role checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kluis.catalog import KluisError
from kluis.vault.auth import Principal, Role, authenticate
from kluis.vault.context import VaultContext

bearer = HTTPBearer(
    auto_error=False, description="A user token (kluis_u_...) or machine token (kluis_m_...)."
)


# Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency on a
# worker thread, and under load (1,000 agents) those hand-offs cost more than the work.


async def get_ctx(request: Request) -> VaultContext:
    """The running vault's shared objects."""
    ctx: VaultContext = request.app.state.ctx
    return ctx


def _token(creds: HTTPAuthorizationCredentials | None) -> str | None:
    return creds.credentials if creds is not None else None


async def bearer_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str | None:
    """The bearer token as sent, not yet checked: for a route that authenticates it inside the
    worker-thread hop it needs anyway (pack reads, work polls), one hop instead of two."""
    return _token(creds)


def principal_of(ctx: VaultContext, token: str | None) -> Principal:
    """The caller a token belongs to; AuthTokenInvalid (401) when it is missing or not valid."""
    with ctx.db.read() as s:
        return authenticate(s, token)


def get_principal(
    creds: HTTPAuthorizationCredentials | None = Depends(bearer), ctx: VaultContext = Depends(get_ctx)
) -> Principal:
    """The authenticated caller; AuthTokenInvalid (401) without a valid token."""
    return principal_of(ctx, _token(creds))


def optional_principal(
    creds: HTTPAuthorizationCredentials | None = Depends(bearer), ctx: VaultContext = Depends(get_ctx)
) -> Principal | None:
    """The caller when a token was sent (registration also accepts vault credentials)."""
    token = _token(creds)
    if not token:
        return None
    return principal_of(ctx, token)


def require(needed: Role, action: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller must be a user with at least ``needed``."""

    async def check(principal: Principal = Depends(get_principal)) -> Principal:
        principal.require(needed, action)
        return principal

    return check


def machine_self(action: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller must be the machine named in the path (its own token)."""

    async def check(machine_id: str, principal: Principal = Depends(get_principal)) -> Principal:
        principal.require_machine(machine_id, action)
        return principal

    return check


def any_machine(action: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller must be a machine (which one is checked against the job)."""

    async def check(principal: Principal = Depends(get_principal)) -> Principal:
        if not principal.is_machine:
            principal.require_machine("", action)
        return principal

    return check


READER = require(Role.READER, "read vault data")


def one_of(field: str, value: str | None, allowed: Sequence[str]) -> str | None:
    """``value`` when it is None or one of ``allowed``; else ValidationFailed naming the choices.

    For list filters: a mistyped state or status would otherwise match nothing and look like
    an empty list.
    """
    if value is not None and value not in allowed:
        choices = ", ".join(allowed)
        raise KluisError("ValidationFailed", reason=f"{field} must be one of {choices}, not {value!r}")
    return value
