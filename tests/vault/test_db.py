"""The database layer: migrations create exactly the models' schema, on both backends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from kluis.catalog import KluisError
from kluis.vault.db import open_database, session
from kluis.vault.db.migrate import current_revision, head_revision
from kluis.vault.db.models import Base
from kluis.vault.db.session import Database


def test_migrations_match_the_models(new_db_url: Callable[[], str]) -> None:
    db = open_database(new_db_url(), "vault-a")
    try:
        assert current_revision(db) == head_revision()
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
        assert diff == []
    finally:
        db.dispose()


def test_concurrent_starts_migrate_once_and_claim_the_database(new_db_url: Callable[[], str]) -> None:
    url = new_db_url()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_database(url, "vault-a").dispose()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with pytest.raises(KluisError) as info:
        open_database(url, "vault-b")
    assert info.value.code == "VaultDatabaseUnavailable" and "vault-a" in info.value.message


def test_unreachable_database_is_a_catalog_error() -> None:
    with pytest.raises(KluisError) as info:
        open_database("postgresql://nobody@127.0.0.1:1/none", "v")
    assert info.value.code == "VaultDatabaseUnavailable"


def test_sqlite_writers_leave_checkpoints_to_the_checkpoint_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer that checkpoints would fsync while holding the write lock; here none does,
    # and the thread (every SQLITE_CHECKPOINT_SECONDS) moves the WAL into the database file.
    monkeypatch.setattr(session, "SQLITE_CHECKPOINT_SECONDS", 0.2)
    path = tmp_path / "v.db"
    db = Database(f"sqlite:///{path}")
    try:
        stop = threading.Event()
        stop.set()  # the first checkpoint thread ends at once: none runs during the writes
        db._stop_checkpoints = stop
        with db.write() as s:
            s.execute(text("CREATE TABLE t (x TEXT)"))
        for _ in range(1200):  # more pages than SQLite's own auto-checkpoint threshold (1000)
            with db.write() as s:
                s.execute(text("INSERT INTO t VALUES (:x)"), {"x": "y" * 3000})
        assert path.stat().st_size < 100_000  # all of it still in the WAL
        assert Path(f"{path}-wal").stat().st_size > 3_000_000
        db._stop_checkpoints = threading.Event()
        db._checkpointer = None  # the next write starts a thread that keeps running
        with db.write() as s:
            s.execute(text("INSERT INTO t VALUES ('z')"))
        deadline = time.monotonic() + 10
        while path.stat().st_size < 3_000_000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert path.stat().st_size > 3_000_000
    finally:
        db.dispose()
    assert db._checkpointer is not None and not db._checkpointer.is_alive()


def test_sqlite_writes_reuse_the_last_connection_and_its_large_cache(tmp_path: Path) -> None:
    # An index file's blob rows land at random places in the b-trees: the write connection
    # keeps a large page cache, and writes take the connection used last, whose cache is
    # still valid (with a first-in-first-out pool they rotated through cold connections).
    db = Database(f"sqlite:///{tmp_path / 'v.db'}")
    try:
        first, second = db.engine.connect(), db.engine.connect()
        first_raw = first.connection.dbapi_connection
        second.close()
        first.close()  # returned last
        with db.write() as s:
            assert s.connection().connection.dbapi_connection is first_raw
            assert s.execute(text("PRAGMA cache_size")).scalar() == -session.SQLITE_WRITE_CACHE_KIB
        with db.read() as s:
            assert s.execute(text("PRAGMA cache_size")).scalar() == -2000  # SQLite's default
    finally:
        db.dispose()
