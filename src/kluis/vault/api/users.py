"""Users and tokens (Admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from kluis.vault import users
from kluis.vault.api.deps import get_ctx, require
from kluis.vault.auth import Principal, Role
from kluis.vault.context import VaultContext

router = APIRouter(prefix="/users", tags=["users"])
ADMIN = require(Role.ADMIN, "manage users")


class NewUser(BaseModel):
    """A user to create."""

    name: str = Field(min_length=1, max_length=200)
    role: str = Field(description="Reader, Operator, Contributor or Admin")


class UserChange(BaseModel):
    """Changes to a user."""

    role: str | None = None
    disabled: bool | None = None


class TokenRequest(BaseModel):
    """A new token for a user."""

    revoke_others: bool = False


@router.get("", summary="List users")
def list_users(ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(ADMIN)) -> list[dict[str, Any]]:
    """Every user and how many live tokens they have."""
    with ctx.db.read() as s:
        return users.list_users(s)


@router.post("", status_code=201, summary="Create a user (the token is shown once)")
def add_user(
    body: NewUser, ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(ADMIN)
) -> dict[str, Any]:
    """A new user with a role and a first token."""
    with ctx.db.write() as s:
        user, token = users.add(s, body.name, body.role)
        return {**users.user_dict(user), "token": token}


@router.patch("/{user_ref}", summary="Change a user's role or disable them")
def change_user(
    user_ref: str, body: UserChange, ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(ADMIN)
) -> dict[str, Any]:
    """The changed user."""
    with ctx.db.write() as s:
        return users.user_dict(users.update(s, user_ref, role=body.role, disabled=body.disabled))


@router.post("/{user_ref}/tokens", status_code=201, summary="Issue another token for a user")
def add_token(
    user_ref: str, body: TokenRequest, ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(ADMIN)
) -> dict[str, Any]:
    """The new token (shown once)."""
    with ctx.db.write() as s:
        return {"token": users.new_token(s, user_ref, revoke_others=body.revoke_others)}
