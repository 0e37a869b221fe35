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

A writer also never runs a WAL checkpoint (``wal_autocheckpoint=0``): the checkpoint's
fsync could take seconds while other processes flood the disk, and the writer would hold
the write lock all that time. A thread of the process checkpoints instead (PASSIVE: it
neither waits for nor blocks writers).
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
# Page cache of a write connection, in KiB (SQLite's default is 2 MiB). One index file
# upserts thousands of blob rows at random places in three b-trees; with the default cache
# the transaction kept evicting and re-reading the same pages. 150k rows took 2.7 CPU-s
# with the default and 2.0 with this (scripted against the vault's schema). The pages are
# allocated only as they are used, and writes reuse one connection (LIFO pool).
SQLITE_WRITE_CACHE_KIB = 64 * 1024
# PostgreSQL connections kept open: one per request thread (AnyIO's 40) plus a few. With 10,
# a loaded vault closed an overflow connection after every transaction and opened a new one
# (a new server process) for the next: most backends were under 5 s old. A vault process
# may use PG_POOL + PG_OVERFLOW connections; size max_connections for the processes you run.
PG_POOL = 40
PG_OVERFLOW = 20
# How often the checkpoint thread moves WAL pages into the database file.
SQLITE_CHECKPOINT_SECONDS = 5.0


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 60},
        pool_size=SQLITE_WRITE_POOL if immediate else SQLITE_READ_POOL,
        max_overflow=32,
        # Writers take the most recently used connection: its page cache is still valid
        # when no other connection wrote in between (the write lock sees to that).
        pool_use_lifo=immediate,
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
        if immediate:
            cur.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it
            cur.execute(f"PRAGMA cache_size=-{SQLITE_WRITE_CACHE_KIB}")
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
            self.engine = create_engine(
                self.url, pool_size=PG_POOL, max_overflow=PG_OVERFLOW, pool_pre_ping=True
            )
            self.read_engine = self.engine
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)
        # Reentrant: a nested write in one thread meets SQLite's busy handler as before,
        # rather than hanging on this lock for good.
        self._write_lock: threading.RLock | None = threading.RLock() if self.dialect == "sqlite" else None
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()

    @property
    def is_sqlite(self) -> bool:
        """Whether this is a SQLite database."""
        return self.dialect == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that may write; commits on success, rolls back on error."""
        if self._write_lock is not None and self._checkpointer is None:
            self._start_checkpoints()
        with self._write_lock or nullcontext(), self._write.begin() as session:
            yield session

    def _start_checkpoints(self) -> None:
        with self._write_lock or nullcontext():
            if self._checkpointer is not None:
                return
            thread = threading.Thread(
                target=self._checkpoint_loop, name="kluis-sqlite-checkpoint", daemon=True
            )
            self._checkpointer = thread
        thread.start()

    def _checkpoint_loop(self) -> None:
        """PASSIVE checkpoints on a connection of its own, outside the write lock, until dispose."""
        while not self._stop_checkpoints.wait(SQLITE_CHECKPOINT_SECONDS):
            try:
                self.checkpoint()
            except Exception:  # a busy or closing database: try again next time
                continue

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE WAL checkpoint (SQLite): (busy, WAL frames, frames checkpointed)."""
        # A raw connection in autocommit: inside a transaction the checkpoint could not run.
        raw = self.read_engine.raw_connection()
        try:
            cur = raw.cursor()
            busy, frames, done = cur.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            cur.close()
        finally:
            raw.close()
        return int(busy), int(frames), int(done)

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
        """Close every pooled connection (and stop the checkpoint thread)."""
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=10)
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
