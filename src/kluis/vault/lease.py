"""A named lease in the database: at most one vault process holds it at a time.

Taking or renewing is one conditional UPDATE: it succeeds when the lease is free,
expired, or already ours. A holder that stops renewing (crashed, paused, cut off)
loses the lease when it expires, and the next process to try takes it over.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from dataclasses import dataclass

from sqlalchemy import select, update

from kluis.vault.db.models import Lease
from kluis.vault.db.session import Database
from kluis.vault.db.types import utcnow


def holder_name() -> str:
    """A name unique to this process: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseInfo:
    """Who holds a lease and until when."""

    name: str
    holder: str | None
    acquired_at: dt.datetime | None
    expires_at: dt.datetime | None

    def held(self, now: dt.datetime | None = None) -> bool:
        """Whether someone holds the lease at ``now``."""
        return self.holder is not None and self.expires_at is not None and self.expires_at > (now or utcnow())


def try_acquire(db: Database, name: str, holder: str, ttl: float, now: dt.datetime | None = None) -> bool:
    """Take or renew the lease for ``ttl`` seconds; False when another live holder has it."""
    now = now or utcnow()
    with db.write() as s:
        # The row lock (PostgreSQL) or the write lock (SQLite) makes read-then-write atomic.
        row = s.scalar(select(Lease).where(Lease.name == name).with_for_update())
        if row is None:
            row = Lease(name=name)
            s.add(row)
        free = row.holder is None or row.expires_at is None or row.expires_at <= now
        if row.holder != holder and not free:
            return False
        if row.holder != holder or free:
            row.acquired_at = now  # a take-over, not a renewal
        row.holder = holder
        row.expires_at = now + dt.timedelta(seconds=ttl)
        return True


def release(db: Database, name: str, holder: str) -> None:
    """Give the lease up if we hold it, so another process can take it at once."""
    with db.write() as s:
        s.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == holder)
            .values(holder=None, expires_at=None, acquired_at=None)
            .execution_options(synchronize_session=False)
        )


def info(db: Database, name: str) -> LeaseInfo:
    """The lease's current row."""
    with db.read() as s:
        row = s.scalar(select(Lease).where(Lease.name == name))
        if row is None:
            return LeaseInfo(name, None, None, None)
        return LeaseInfo(name, row.holder, row.acquired_at, row.expires_at)
