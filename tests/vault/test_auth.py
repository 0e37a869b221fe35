"""Bearer tokens against the database: every way a token can stop being valid has its reason.

The vault checks a token on every request with one statement that reads the token and its
owner together; these cases pin what that statement decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kluis.catalog import KluisError
from kluis.vault.auth import (
    Principal,
    Role,
    authenticate,
    issue_machine_token,
    issue_user_token,
    new_token,
)
from kluis.vault.db import open_database
from kluis.vault.db.models import Machine, User
from kluis.vault.db.session import Database
from kluis.vault.db.types import utcnow


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path / 'v.db'}", "vault-1")
    try:
        yield database
    finally:
        database.dispose()


def _check(db: Database, token: str | None) -> Principal:
    with db.read() as s:
        return authenticate(s, token)


def _reason(db: Database, token: str | None) -> str:
    with pytest.raises(KluisError) as info:
        _check(db, token)
    assert info.value.code == "AuthTokenInvalid"
    return str(info.value.params["reason"])


def _owners(db: Database, role: str) -> tuple[str, str, str, str]:
    """A user with ``role`` and a machine registered twice: (user id, user token, the
    machine's first token, which the second registration revoked, and its second)."""
    with db.write() as s:
        user = User(name="ops", role=role)
        s.add(user)
        s.add(Machine(id="m" * 32, hostname="web-1", key_fingerprint="f"))
        s.flush()
        user_token = issue_user_token(s, user)
        first = issue_machine_token(s, "m" * 32)
        second = issue_machine_token(s, "m" * 32)
        return user.id, user_token, first, second


def test_user_and_machine_tokens_name_their_owner(db: Database) -> None:
    user_id, user_token, _first, machine_token = _owners(db, "operator")
    assert _check(db, user_token) == Principal("user", "ops", role=Role.OPERATOR, user_id=user_id)
    assert _check(db, machine_token) == Principal("machine", "web-1", machine_id="m" * 32)


def test_each_invalid_token_says_why(db: Database) -> None:
    user_id, user_token, first, second = _owners(db, "admin")
    assert _reason(db, None) == "no bearer token was sent"
    assert _reason(db, "Bearer something") == "this is not a Kluis token"
    assert _reason(db, new_token("machine")) == "the token is unknown"
    assert _reason(db, first) == "the token was revoked"
    assert _check(db, second).machine_id == "m" * 32
    with db.write() as s:
        s.get(User, user_id).disabled = True  # type: ignore[union-attr]
        s.get(Machine, "m" * 32).deleted_at = utcnow()  # type: ignore[union-attr]
    assert _reason(db, user_token) == "the user is disabled or removed"
    assert _reason(db, second) == "the machine was removed from the vault"
