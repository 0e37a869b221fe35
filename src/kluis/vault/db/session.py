"""Database engines and transactions for SQLite (WAL) and PostgreSQL.

SQLite serialises writers; a transaction that reads and then writes must take the
write lock up front (``BEGIN IMMEDIATE``) or two of them deadlock on the upgrade.
So SQLite gets two engines: writes begin IMMEDIATE, reads begin DEFERRED and, in
WAL mode, never block. PostgreSQL uses one engine; code that must serialise on a
row says so with ``SELECT ... FOR UPDATE`` (ignored by SQLite, where the write lock
already serialises).

Within one process, SQLite writers also queue on a Python lock before they ask SQLite
for its write lock. SQLite's own busy handler polls with sleeps of up to 100 ms, and
under load a newcomer keeps winning against a writer that happens to be asleep: with
1,000 agents heartbeating, some heartbeats waited over a minute (benchmarks/RESULTS-vault.md).
The Python lock hands the write lock on without sleeping; other processes still meet
the busy handler.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def normalise_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs; leave everything else alone."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


# Connections kept open per SQLite engine. Reads run on up to 40 request threads (AnyIO's
# default) plus the scheduler's; a smaller pool closed and reopened connections all the
# time under load, each reopening paying for the PRAGMAs below.
SQLITE_READ_POOL = 48
# Writers queue on the process's write lock before they take a connection, so few are needed.
SQLITE_WRITE_POOL = 4


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 60},
        pool_size=SQLITE_WRITE_POOL if immediate else SQLITE_READ_POOL,
        max_overflow=32,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module: we emit BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """Engines and session factories for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        if self.dialect == "sqlite":
            self.engine = _sqlite_engine(self.url, immediate=True)
            self.read_engine = _sqlite_engine(self.url, immediate=False)
        else:
            self.engine = create_engine(self.url, pool_size=10, max_overflow=40, pool_pre_ping=True)
            self.read_engine = self.engine
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)
        # Reentrant: a nested write in one thread meets SQLite's busy handler as before,
        # rather than hanging on this lock for good.
        self._write_lock: threading.RLock | None = threading.RLock() if self.dialect == "sqlite" else None

    @property
    def is_sqlite(self) -> bool:
        """Whether this is a SQLite database."""
        return self.dialect == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that may write; commits on success, rolls back on error."""
        with self._write_lock or nullcontext(), self._write.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (never blocks writers on SQLite)."""
        session = self._read()
        try:
            with session.begin():
                yield session
        finally:
            session.close()

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
