"""The vault's tables. Migrations in ``migrations/versions`` create exactly these.

Ids are 32-character hex strings (uuid4) except where the repository format names
things itself: recovery points use the agent's point id, packs and blobs their
32-byte BLAKE3 ids as binary.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kluis.vault.db.types import UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Job statuses that hold an item's "one backup at a time" slot.
ACTIVE_JOB_STATUSES = ("InProgress", "Cancelling")
_ACTIVE_BACKUP = "type = 'Backup' AND status IN ('InProgress', 'Cancelling')"


def new_id() -> str:
    """A fresh random id."""
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (migrations refer to them)."""

    metadata = MetaData(naming_convention=NAMING)


class VaultMeta(Base):
    """Key/value facts about the database itself, e.g. which vault it belongs to."""

    __tablename__ = "vault_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    """A person or script using the API with a role."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiToken(Base):
    """A bearer token, stored only as its SHA-256. Belongs to a user or to a machine."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(10))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"), index=True)
    machine_id: Mapped[str | None] = mapped_column(ForeignKey("machines.id"), index=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RegistrationSecret(Base):
    """The secret of one vault credentials file. Only the newest unexpired one is valid."""

    __tablename__ = "registration_secrets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200), default="")


class Machine(Base):
    """A registered machine: one agent, one repository under ``machines/<id>/``."""

    __tablename__ = "machines"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    hostname: Mapped[str] = mapped_column(String(255), index=True)
    os: Mapped[str] = mapped_column(String(200), default="")
    agent_version: Mapped[str] = mapped_column(String(50), default="")
    key_fingerprint: Mapped[str] = mapped_column(String(128))
    # SHA-256 (hex) of MasterKeys.registration_proof(): re-registering must present the proof.
    # None for machines registered without one (older agents); the fingerprint alone then.
    key_proof_hash: Mapped[str | None] = mapped_column(String(64))
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    agent_status: Mapped[str | None] = mapped_column(String(40))
    extensions: Mapped[Any] = mapped_column(JSON, default=list)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class KeySet(Base):
    """A wrapped master key set of a machine (the content of ``keys/<id>``)."""

    __tablename__ = "key_sets"
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Policy(Base):
    """When items are backed up and how long their recovery points are kept."""

    __tablename__ = "policies"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    timezone: Mapped[str] = mapped_column(String(64))
    schedule: Mapped[Any] = mapped_column(JSON)
    retention: Mapped[Any] = mapped_column(JSON)
    instant_rp_days: Mapped[int] = mapped_column(Integer, default=2)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProtectedItem(Base):
    """A file/folder set or the disks of a machine, protected under a policy."""

    __tablename__ = "items"
    __table_args__ = (
        # Names are unique per machine among items that still exist; a purged name is free again.
        Index(
            "uq_items_machine_name",
            "machine_id",
            "name",
            unique=True,
            sqlite_where=text("state != 'Deleted'"),
            postgresql_where=text("state != 'Deleted'"),
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    spec: Mapped[Any] = mapped_column(JSON)
    policy_id: Mapped[str | None] = mapped_column(ForeignKey("policies.id"), index=True)
    state: Mapped[str] = mapped_column(String(30), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The last policy run the scheduler handled; runs up to here are never created again.
    last_slot_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    purge_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_backup_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_backup_status: Mapped[str | None] = mapped_column(String(30))


class Job(Base):
    """One unit of work: run by an agent (backup, restore) or by the vault (GC, retention)."""

    __tablename__ = "jobs"
    __table_args__ = (
        # One backup per item at a time, enforced by the database itself.
        Index(
            "uq_jobs_one_backup_per_item",
            "item_id",
            unique=True,
            sqlite_where=text(_ACTIVE_BACKUP),
            postgresql_where=text(_ACTIVE_BACKUP),
        ),
        Index("ix_jobs_machine_status", "machine_id", "status"),
        Index("ix_jobs_status_type", "status", "type"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    type: Mapped[str] = mapped_column(String(30))
    status: Mapped[str] = mapped_column(String(30))
    trigger: Mapped[str] = mapped_column(String(20), default="OnDemand")
    item_id: Mapped[str | None] = mapped_column(ForeignKey("items.id"), index=True)
    machine_id: Mapped[str | None] = mapped_column(ForeignKey("machines.id"))
    phase: Mapped[str | None] = mapped_column(String(60))
    progress: Mapped[Any] = mapped_column(JSON, default=dict)
    params: Mapped[Any] = mapped_column(JSON, default=dict)
    result: Mapped[Any] = mapped_column(JSON, default=dict)
    error: Mapped[Any | None] = mapped_column(JSON)
    warnings: Mapped[Any] = mapped_column(JSON, default=list)
    cancel_error: Mapped[Any | None] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    not_before: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cancel_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    retain_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RecoveryPoint(Base):
    """A committed recovery point (``points/<id>``), with what its plaintext header says."""

    __tablename__ = "recovery_points"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"), index=True)
    item_id: Mapped[str | None] = mapped_column(ForeignKey("items.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    kind: Mapped[str] = mapped_column(String(40))
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    trigger: Mapped[str] = mapped_column(String(20), default="Scheduled")
    header: Mapped[Any] = mapped_column(JSON)
    refs_count: Mapped[int] = mapped_column(BigInteger, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    retain_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(20), default="Available", index=True)
    expired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Pack(Base):
    """A pack object accepted by the vault (checksum and trailer checked)."""

    __tablename__ = "packs"
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"), primary_key=True)
    pack_id: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    blob_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Blob(Base):
    """Where one blob lives, from accepted index files. A blob may sit in several packs."""

    __tablename__ = "blobs"
    __table_args__ = (Index("ix_blobs_machine_pack", "machine_id", "pack_id"),)
    machine_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    blob_id: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    pack_id: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    type: Mapped[int] = mapped_column(SmallInteger)
    offset: Mapped[int] = mapped_column(BigInteger)
    length: Mapped[int] = mapped_column(Integer)
    raw_length: Mapped[int] = mapped_column(Integer)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class IndexFile(Base):
    """An index object accepted by the vault."""

    __tablename__ = "index_files"
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"), primary_key=True)
    index_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    entries: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Alert(Base):
    """Something an operator should look at, e.g. a failed backup."""

    __tablename__ = "alerts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    code: Mapped[str] = mapped_column(String(80))
    severity: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="Active", index=True)
    machine_id: Mapped[str | None] = mapped_column(ForeignKey("machines.id"))
    item_id: Mapped[str | None] = mapped_column(ForeignKey("items.id"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    details: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Lease(Base):
    """A named lease one vault process holds at a time (the scheduler's)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(200))
    acquired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class GcState(Base):
    """Per machine: whether garbage collection is sweeping its repository right now.

    Backups start (are dispatched) and sweeps start only in transactions that lock
    this row, which is the whole of the GC safety rule.
    """

    __tablename__ = "gc_state"
    machine_id: Mapped[str] = mapped_column(ForeignKey("machines.id"), primary_key=True)
    sweeping: Mapped[bool] = mapped_column(Boolean, default=False)
    holder: Mapped[str | None] = mapped_column(String(200))
    job_id: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_gc_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
