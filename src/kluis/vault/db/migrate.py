"""Bring a database to the current schema with Alembic, from the installed package.

Several vault processes may start at once against one database, so the upgrade
runs under a lock: a PostgreSQL advisory lock, or a lock file beside a SQLite file.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from kluis.catalog import KluisError
from kluis.vault.db.models import Lease, VaultMeta
from kluis.vault.db.session import Database, redact

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_KEY = 0x4B4C5553  # "KLUS": one key for every Kluis vault migration
SCHEDULER_LEASE = "scheduler"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration this package ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(db: Database) -> str | None:
    """The revision the database is at (None when empty)."""
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _migration_lock(db: Database) -> Iterator[None]:
    if db.is_sqlite:
        path = make_url(db.url).database
        if not path or path == ":memory:":
            yield
            return
        with open(f"{path}.migrate-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return
    with db.engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()


def _upgrade(db: Database) -> None:
    if db.is_sqlite:
        # Alembic manages its own transaction; a plain connection avoids our BEGIN IMMEDIATE hook
        # fighting with it.
        with db.read_engine.connect() as conn:
            command.upgrade(alembic_config(conn), "head")
            conn.commit()
    else:
        with db.engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")


def upgrade(db: Database) -> None:
    """Run every pending migration."""
    with _migration_lock(db):
        _upgrade(db)


def _claim(db: Database, vault_id: str, url: str) -> None:
    """Record which vault the database belongs to (or check it), and create the lease row."""
    with db.write() as s:
        owner = s.get(VaultMeta, "vault_id")
        if owner is None:
            s.add(VaultMeta(key="vault_id", value=vault_id))
        elif owner.value != vault_id:
            raise KluisError(
                "VaultDatabaseUnavailable",
                url=redact(url),
                reason=f"it belongs to vault {owner.value}, not {vault_id}",
            )
        if s.scalar(select(Lease).where(Lease.name == SCHEDULER_LEASE)) is None:
            s.add(Lease(name=SCHEDULER_LEASE))


def open_database(url: str, vault_id: str) -> Database:
    """Open, migrate and claim a database for a vault; VaultDatabaseUnavailable when it cannot be used."""
    try:
        db = Database(url)
    except (SQLAlchemyError, ValueError) as exc:
        raise KluisError("VaultDatabaseUnavailable", url=redact(url), reason=str(exc)) from None
    try:
        # Migrating and claiming under one lock: processes starting together take turns.
        with _migration_lock(db):
            _upgrade(db)
            _claim(db, vault_id, url)
    except KluisError:
        db.dispose()
        raise
    except (SQLAlchemyError, OSError) as exc:
        db.dispose()
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise KluisError("VaultDatabaseUnavailable", url=redact(url), reason=reason) from None
    return db
