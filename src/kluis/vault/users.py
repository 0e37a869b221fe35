"""Users and their tokens (Admin only through the API; ``kluis vault users`` on the server)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.vault.auth import Role, issue_user_token
from kluis.vault.db.models import ApiToken, User
from kluis.vault.db.types import utcnow

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,199}$")


def user_dict(user: User, tokens: int | None = None) -> dict[str, Any]:
    """The API shape of a user."""
    out: dict[str, Any] = {
        "id": user.id,
        "name": user.name,
        "role": Role[user.role.upper()].label,
        "disabled": user.disabled,
        "created_at": user.created_at.isoformat(),
    }
    if tokens is not None:
        out["tokens"] = tokens
    return out


def get_user(session: Session, ref: str) -> User:
    """A user by id or name."""
    user = session.get(User, ref) or session.scalar(select(User).where(User.name == ref))
    if user is None:
        raise KluisError("ResourceNotFound", kind="user", name=ref)
    return user


def add(session: Session, name: str, role: str) -> tuple[User, str]:
    """Create a user with a first token; returns the user and the token (shown once)."""
    if not _NAME.match(name):
        raise KluisError("ValidationFailed", reason=f"user name {name!r} has characters that are not allowed")
    parsed = Role.parse(role)
    user = User(name=name, role=parsed.name.lower())
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError:
        raise KluisError("ResourceExists", kind="user", name=name) from None
    return user, issue_user_token(session, user, "first token")


def update(session: Session, ref: str, *, role: str | None, disabled: bool | None) -> User:
    """Change a user's role or disable/enable them."""
    user = get_user(session, ref)
    if role is not None:
        user.role = Role.parse(role).name.lower()
    if disabled is not None:
        user.disabled = disabled
    return user


def new_token(session: Session, ref: str, *, revoke_others: bool) -> str:
    """Another token for a user, optionally revoking the ones they had."""
    user = get_user(session, ref)
    if revoke_others:
        now = utcnow()
        for tok in session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        ):
            tok.revoked_at = now
    return issue_user_token(session, user, "additional token")


def list_users(session: Session) -> list[dict[str, Any]]:
    """Every user with the number of live tokens."""
    counts = dict(
        session.execute(
            select(ApiToken.user_id, func.count())
            .where(ApiToken.kind == "user", ApiToken.revoked_at.is_(None))
            .group_by(ApiToken.user_id)
        ).all()
    )
    return [user_dict(u, counts.get(u.id, 0)) for u in session.scalars(select(User).order_by(User.name))]
