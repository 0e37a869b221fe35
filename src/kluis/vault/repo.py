"""The repository object API's rules: every write is checked before it becomes visible.

One repository per machine under ``machines/<id>/`` in the vault's store. What each
object name may hold (see docs/api.md and the vault contract):

- ``config``: written once; the same content again is accepted, other content is a conflict.
- ``keys/<hex>``: a wrapped key set (JSON object); recorded in the database.
- ``data/<hh>/<pack id>``: BLAKE3 of the body is the pack id and the trailer parses and adds
  up; recorded (pack id, size, time). Uploading an existing pack again is accepted.
- ``index/<id>``: BLAKE3 is the id, it parses, every pack it names is held; its entries
  become blob rows.
- ``refs/<point id>``: parses as a reference list.
- ``points/<point id>``: parses; in one transaction the reference list exists, every blob it
  names is a live blob row of this machine, and the recovery point row is created.

Nothing is ever deleted through this API: only retention and garbage collection delete.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.engine.format import (
    FOOTER_SIZE,
    TABLE_ENTRY_SIZE,
    check_pack_trailer,
    decode_index_rows,
    decode_point,
    decode_refs,
)
from kluis.stores import ObjectInfo
from kluis.vault.auth import Principal, Role
from kluis.vault.context import VaultContext
from kluis.vault.db.models import (
    ACTIVE_JOB_STATUSES,
    GcState,
    IndexFile,
    Job,
    KeySet,
    Machine,
    Pack,
    ProtectedItem,
    RecoveryPoint,
)
from kluis.vault.db.types import utcnow

T = TypeVar("T")
MAX_HAVE = 10_000
_CHUNK = 500
_UPSERT_BATCH = 10_000
_ID = r"[0-9a-f]{64}"
_POINT = r"[A-Za-z0-9_-]{1,128}"
PATTERNS: dict[str, re.Pattern[str]] = {
    "config": re.compile(r"config"),
    "keys": re.compile(r"keys/([0-9a-f]{1,64})"),
    "data": re.compile(rf"data/([0-9a-f]{{2}})/({_ID})"),
    "index": re.compile(rf"index/({_ID})"),
    "refs": re.compile(rf"refs/({_POINT})"),
    "points": re.compile(rf"points/({_POINT})"),
}


@dataclass(frozen=True)
class Upload:
    """A finished upload waiting for its checks: the bytes and their BLAKE3.

    A pack's bytes may be a view of the API's reused upload buffer: valid only during ``put``.
    """

    name: str
    data: bytes | memoryview
    blake3_hex: str

    @property
    def body(self) -> bytes:
        """The bytes as ``bytes`` (a copy only when ``data`` is a view), for objects that are parsed."""
        return self.data if isinstance(self.data, bytes) else bytes(self.data)


def classify(name: str) -> tuple[str, str]:
    """(kind, id) of an object name; ValidationFailed for names the format does not have."""
    for kind, pattern in PATTERNS.items():
        match = pattern.fullmatch(name)
        if match:
            ident = match.group(match.lastindex or 0) if match.lastindex else ""
            if kind == "data" and match.group(1) != match.group(2)[:2]:
                break
            return kind, ident
    raise KluisError("ValidationFailed", reason=f"{name!r} is not a repository object name")


def check_prefix(prefix: str) -> str:
    """A listing prefix must not escape the repository."""
    if prefix.startswith("/") or ".." in prefix.split("/") or "\\" in prefix or "\x00" in prefix:
        raise KluisError("ValidationFailed", reason=f"prefix {prefix!r} is not allowed")
    return prefix


def can_read(session: Session, principal: Principal, machine_id: str) -> None:
    """Reads: the machine itself, a machine restoring from it, or a user with Operator or more."""
    if principal.is_machine:
        if principal.machine_id == machine_id:
            return
        restoring = session.scalars(
            select(Job.params).where(
                Job.machine_id == principal.machine_id,
                Job.type == "Restore",
                Job.status.in_(ACTIVE_JOB_STATUSES),
            )
        ).all()
        if any((p or {}).get("source_machine_id") == machine_id for p in restoring):
            return
        principal.require_machine(machine_id, "read another machine's repository")
    principal.require(Role.OPERATOR, "read a machine's repository")


def _hexid(data: bytes) -> str:
    return data.hex()


def in_chunks(values: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    """``values`` in consecutive slices of at most ``size`` (for IN lists of bounded length)."""
    for i in range(0, len(values), size):
        yield values[i : i + size]


_LIVE_SQL = (
    "SELECT DISTINCT b.blob_id FROM blobs b JOIN packs p"
    " ON p.machine_id = b.machine_id AND p.pack_id = b.pack_id"
    " WHERE b.machine_id = {p} AND b.deleted = {false} AND p.deleted_at IS NULL AND b.blob_id {match}"
)
_LIVE_CHUNK = {"sqlite": 2_000, "postgresql": 20_000}


def live_blobs(session: Session, machine_id: str, ids: Sequence[bytes]) -> set[bytes]:
    """Which of ``ids`` are live blobs of the machine, in a pack the vault still holds.

    The pack is checked too, not only the blob row: a row left live after its pack was
    deleted must not let a recovery point (or the agent's dedup) count on data that is gone.
    A first backup's point names about 130k blobs, and the agent waits for this check.
    Built as SQLAlchemy statements of 500 ids each it took 0.9 s on SQLite; plain driver
    SQL in larger chunks (an array parameter on PostgreSQL) takes about half of that.
    """
    found: set[bytes] = set()
    if not ids:
        return found
    dialect = session.get_bind().dialect.name
    conn = session.connection()
    chunk = _LIVE_CHUNK.get(dialect, _CHUNK)
    for part in in_chunks(ids, chunk):
        if dialect == "postgresql":
            sql = _LIVE_SQL.format(p="%s", false="false", match="= ANY(%s)")
            params: tuple[Any, ...] = (machine_id, list(part))
        else:
            marks = ",".join("?" * len(part))
            sql = _LIVE_SQL.format(p="?", false="0", match=f"IN ({marks})")
            params = (machine_id, *part)
        found.update(row[0] for row in conn.exec_driver_sql(sql, params))
    return found


_BLOB_COLUMNS = 'machine_id, blob_id, pack_id, type, "offset", length, raw_length, deleted'
_UPSERT_SQL = {
    # Plain driver SQL, one statement run over many parameter rows by the driver itself.
    "sqlite": f"INSERT INTO blobs ({_BLOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0) "
    "ON CONFLICT (machine_id, blob_id, pack_id) DO UPDATE SET deleted = 0",
    "postgresql": f"INSERT INTO blobs ({_BLOB_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, false) "
    "ON CONFLICT (machine_id, blob_id, pack_id) DO UPDATE SET deleted = false",
}


def upsert_blobs(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert blob rows; rows already present become live again.

    Every index file brings thousands of rows, and a first backup hundreds of thousands:
    they go to the database driver as plain tuples under one statement (the driver loops
    in C). Building SQLAlchemy statements per batch was the vault's largest CPU cost in a
    first backup, larger than receiving, hashing and storing the packs.
    """
    if not rows:
        return
    sql = _UPSERT_SQL[session.get_bind().dialect.name]
    params = [
        (
            r["machine_id"],
            r["blob_id"],
            r["pack_id"],
            r["type"],
            r["offset"],
            r["length"],
            r["raw_length"],
        )
        for r in rows
    ]
    # In key order, each b-tree page is visited once per batch rather than once per row
    # (blob ids are random): 150k rows took 2.1 CPU-s on SQLite instead of 2.7.
    params.sort(key=itemgetter(1))
    conn = session.connection()
    for i in range(0, len(params), _UPSERT_BATCH):
        conn.exec_driver_sql(sql, params[i : i + _UPSERT_BATCH])


def live_pack(session: Session, machine_id: str, pack_id: bytes) -> Pack | None:
    """The pack's row while the vault holds the pack (recorded and not deleted), else None."""
    row = session.get(Pack, (machine_id, pack_id))
    return row if row is not None and row.deleted_at is None else None


def refuse_while_sweeping(session: Session, machine_id: str, what: str) -> None:
    """RepoMaintenanceInProgress while GC sweeps the machine's repository (locks its GC row)."""
    gc = session.scalar(select(GcState).where(GcState.machine_id == machine_id).with_for_update())
    if gc is not None and gc.sweeping and gc.lease_until is not None and gc.lease_until > utcnow():
        raise KluisError("RepoMaintenanceInProgress", machine=machine_id, what=what)


class RepoService:
    """Reads and checked writes of machine repositories."""

    def __init__(self, ctx: VaultContext) -> None:
        self.ctx = ctx
        self.store = ctx.store

    def full(self, machine_id: str, name: str) -> str:
        """The store name of a repository object."""
        return self.ctx.repo_prefix(machine_id) + name

    def not_found(self, name: str) -> KluisError:
        """StoreObjectNotFound naming the vault, not its storage path."""
        return KluisError("StoreObjectNotFound", name=name, store=f"vault {self.ctx.config.vault_name}")

    # -- reads ---------------------------------------------------------------------------

    def list_objects(self, machine_id: str, prefix: str, after: str | None, limit: int) -> list[ObjectInfo]:
        """One page of objects under ``prefix``, by name."""
        base = self.ctx.repo_prefix(machine_id)
        names = sorted(
            (ObjectInfo(o.name[len(base) :], o.size) for o in self.store.list(base + check_prefix(prefix))),
            key=lambda o: o.name,
        )
        if after:
            names = [o for o in names if o.name > after]
        return names[:limit]

    def stat(self, machine_id: str, name: str) -> ObjectInfo:
        """Size of an object; a pack only once the vault has recorded it.

        A pack is stored first and recorded second. A vault stopped in between leaves the
        file without its row; an agent that asked before re-sending it would be told the
        pack is held, skip it, and have its index refused for naming a pack the vault
        does not hold. Until the upload is recorded, the pack is not there.
        """
        kind, ident = classify(name)
        if kind == "data":
            with self.ctx.db.read() as s:
                if live_pack(s, machine_id, bytes.fromhex(ident)) is None:
                    raise self.not_found(name)
        try:
            info = self.store.stat(self.full(machine_id, name))
        except KluisError as exc:
            if exc.code == "StoreObjectNotFound":
                raise self.not_found(name) from None
            raise
        return ObjectInfo(name, info.size)

    def read(self, machine_id: str, name: str, offset: int, length: int) -> bytes:
        """A byte range of an object."""
        try:
            return self.store.get(self.full(machine_id, name), offset, length)
        except KluisError as exc:
            if exc.code == "StoreObjectNotFound":
                raise self.not_found(name) from None
            raise

    def have(self, machine_id: str, ids: list[str]) -> list[str]:
        """Which blob ids the machine's repository holds."""
        if len(ids) > MAX_HAVE:
            raise KluisError("ValidationFailed", reason=f"at most {MAX_HAVE} ids per request")
        try:
            raw = [bytes.fromhex(i) for i in ids]
        except ValueError:
            raise KluisError("ValidationFailed", reason="ids must be hex") from None
        if any(len(r) != 32 for r in raw):
            raise KluisError("ValidationFailed", reason="ids must be 64 hex digits")
        with self.ctx.db.read() as s:
            found = live_blobs(s, machine_id, raw)
        return [i for i, r in zip(ids, raw, strict=True) if r in found]

    # -- writes --------------------------------------------------------------------------

    def put(
        self, machine_id: str, upload: Upload, *, item_id: str | None, job_id: str | None
    ) -> dict[str, Any]:
        """Check and store one uploaded object; returns ``{"name", "size", "created"}``."""
        kind, ident = classify(upload.name)
        handler = {
            "config": self._put_config,
            "keys": self._put_key,
            "data": self._put_pack,
            "index": self._put_index,
            "refs": self._put_refs,
        }.get(kind)
        if handler is not None:
            created = handler(machine_id, ident, upload)
        else:
            created = self._put_point(machine_id, ident, upload, item_id, job_id)
        return {"name": upload.name, "size": len(upload.data), "created": created}

    def _same_or_conflict(self, machine_id: str, name: str, data: bytes) -> bool:
        """True when the object exists with this content, False when absent; conflict otherwise."""
        full = self.full(machine_id, name)
        try:
            existing = self.store.get(full)
        except KluisError as exc:
            if exc.code == "StoreObjectNotFound":
                return False
            raise
        if existing != data:
            raise KluisError("RepoObjectConflict", name=name)
        return True

    def _put_config(self, machine_id: str, _ident: str, up: Upload) -> bool:
        try:
            body = json.loads(up.body)
        except (ValueError, UnicodeDecodeError):
            raise KluisError("RepoUploadRejected", name=up.name, reason="it is not JSON") from None
        if not isinstance(body, dict):
            raise KluisError("RepoUploadRejected", name=up.name, reason="it is not a JSON object")
        if self._same_or_conflict(machine_id, up.name, up.body):
            return False
        self.store.put(self.full(machine_id, up.name), up.body)
        return True

    def _put_key(self, machine_id: str, key_id: str, up: Upload) -> bool:
        try:
            body = json.loads(up.body)
        except (ValueError, UnicodeDecodeError):
            raise KluisError("RepoUploadRejected", name=up.name, reason="it is not JSON") from None
        if not isinstance(body, dict):
            raise KluisError("RepoUploadRejected", name=up.name, reason="it is not a JSON object")
        text = up.body.decode()
        with self.ctx.db.write() as s:
            row = s.get(KeySet, (machine_id, key_id))
            if row is not None and row.body != text:
                raise KluisError("RepoObjectConflict", name=up.name)
            if self._same_or_conflict(machine_id, up.name, up.body) and row is not None:
                return False
            if row is None:
                s.add(KeySet(machine_id=machine_id, key_id=key_id, body=text))
            self.store.put(self.full(machine_id, up.name), up.body)
        return True

    def _put_pack(self, machine_id: str, pack_hex: str, up: Upload) -> bool:
        if up.blake3_hex != pack_hex:
            raise KluisError("RepoUploadChecksumMismatch", name=up.name, actual=up.blake3_hex)
        if len(up.data) < FOOTER_SIZE:
            raise KluisError("RepoUploadRejected", name=up.name, reason="too short for a pack")
        # Only the table and footer are parsed: copy those, not the (possibly viewed) whole pack.
        count = int.from_bytes(up.data[-FOOTER_SIZE : -FOOTER_SIZE + 4], "little")
        tail = bytes(up.data[-min(len(up.data), count * TABLE_ENTRY_SIZE + FOOTER_SIZE) :])
        try:
            blob_count = check_pack_trailer(up.name, tail, len(up.data))
        except KluisError as exc:
            raise KluisError("RepoUploadRejected", name=up.name, reason=exc.message) from None
        pack_id = bytes.fromhex(pack_hex)
        with self.ctx.db.read() as s:
            if live_pack(s, machine_id, pack_id) is not None and self.store.exists(
                self.full(machine_id, up.name)
            ):
                return False  # a retried upload: already held
        # Store first, record second: the store write is the slow part and must not hold
        # the database's write lock; a pack stored but not yet recorded is unreferenced.
        self.store.put(self.full(machine_id, up.name), up.data)
        with self.ctx.db.write() as s:
            row = s.get(Pack, (machine_id, pack_id))
            if row is None:
                s.add(Pack(machine_id=machine_id, pack_id=pack_id, size=len(up.data), blob_count=blob_count))
            else:
                row.size = len(up.data)
                row.blob_count = blob_count
                row.created_at = utcnow()
                row.deleted_at = None
        return True

    def _put_index(self, machine_id: str, index_hex: str, up: Upload) -> bool:
        if up.blake3_hex != index_hex:
            raise KluisError("RepoUploadChecksumMismatch", name=up.name, actual=up.blake3_hex)
        try:
            # Plain tuples: one object per blob made the vault's CPU cost grow with small files.
            entries = list(decode_index_rows(up.name, up.body))
        except KluisError as exc:
            raise KluisError("RepoUploadRejected", name=up.name, reason=exc.message) from None
        with self.ctx.db.write() as s:
            refuse_while_sweeping(s, machine_id, "adding an index file")
            existing = s.get(IndexFile, (machine_id, index_hex))
            if existing is not None and existing.deleted_at is None:
                return False
            packs = {pid: live_pack(s, machine_id, pid) for pid in {e[1] for e in entries}}
            rows = []
            for blob_id, pack_id, btype, _flags, offset, length, raw_length in entries:
                pack = packs[pack_id]
                if pack is None:
                    reason = f"it names pack {_hexid(pack_id)}, which the vault does not hold"
                    raise KluisError("RepoUploadRejected", name=up.name, reason=reason)
                if offset + length > pack.size:
                    reason = f"blob {_hexid(blob_id)} lies outside pack {_hexid(pack_id)}"
                    raise KluisError("RepoUploadRejected", name=up.name, reason=reason)
                rows.append(
                    {
                        "machine_id": machine_id,
                        "blob_id": blob_id,
                        "pack_id": pack_id,
                        "type": btype,
                        "offset": offset,
                        "length": length,
                        "raw_length": raw_length,
                        "deleted": False,
                    }
                )
            if rows:
                upsert_blobs(s, rows)
            if existing is None:
                s.add(IndexFile(machine_id=machine_id, index_id=index_hex, entries=len(rows)))
            else:
                existing.deleted_at = None
                existing.entries = len(rows)
            self.store.put(self.full(machine_id, up.name), up.body)
        return True

    def _put_refs(self, machine_id: str, point_id: str, up: Upload) -> bool:
        try:
            decode_refs(point_id, up.body)
        except KluisError as exc:
            raise KluisError("RepoUploadRejected", name=up.name, reason=exc.message) from None
        with self.ctx.db.read() as s:
            committed = s.get(RecoveryPoint, point_id) is not None
        # The point is the commit: once it exists its reference list may no longer change.
        if committed and self._same_or_conflict(machine_id, up.name, up.body):
            return False
        self.store.put(self.full(machine_id, up.name), up.body)
        return True

    def _put_point(
        self, machine_id: str, point_id: str, up: Upload, item_id: str | None, job_id: str | None
    ) -> bool:
        try:
            header, _sealed = decode_point(point_id, up.body)
            when = dt.datetime.fromisoformat(str(header["time"]))
            kind = str(header["kind"])
        except KluisError as exc:
            raise KluisError("RepoUploadRejected", name=up.name, reason=exc.message) from None
        except (KeyError, ValueError):
            raise KluisError(
                "RepoUploadRejected", name=up.name, reason="the header lacks time or kind"
            ) from None
        if when.tzinfo is None:
            raise KluisError("RepoUploadRejected", name=up.name, reason="the header's time has no time zone")
        with self.ctx.db.write() as s:
            refuse_while_sweeping(s, machine_id, "recording a recovery point")
            existing = s.get(RecoveryPoint, point_id)
            if existing is not None:
                if existing.machine_id == machine_id and self._same_or_conflict(machine_id, up.name, up.body):
                    return False
                raise KluisError("RepoObjectConflict", name=up.name)
            try:
                refs = decode_refs(point_id, self.store.get(self.full(machine_id, f"refs/{point_id}")))
            except KluisError as exc:
                reason = f"its reference list refs/{point_id} was not uploaded first"
                if exc.code != "StoreObjectNotFound":
                    reason = f"its reference list cannot be read: {exc.message}"
                raise KluisError("RepoUploadRejected", name=up.name, reason=reason) from None
            # The header says how many blobs the point references; a reference list that
            # disagrees (replaced or cut short before the point) would check too little.
            counted = header.get("refs")
            if isinstance(counted, bool) or counted != len(refs):
                reason = f"its header counts {counted!r} references, refs/{point_id} lists {len(refs)}"
                raise KluisError("RepoUploadRejected", name=up.name, reason=reason)
            found = live_blobs(s, machine_id, refs)
            missing = [r for r in refs if r not in found]
            if missing:
                raise KluisError(
                    "RepoPointIncomplete", point=point_id, count=len(missing), blob=missing[0].hex()
                )
            item, job = self._point_owner(s, machine_id, item_id, job_id)
            size = header.get("size", header.get("bytes", 0))
            s.add(
                RecoveryPoint(
                    id=point_id,
                    machine_id=machine_id,
                    item_id=item.id if item else None,
                    job_id=job.id if job else None,
                    kind=kind[:40],
                    time=when,
                    trigger=job.trigger if job else "Direct",
                    header=header,
                    refs_count=len(refs),
                    size=size if isinstance(size, int) and size >= 0 else 0,
                    retain_until=job.retain_until if job else None,
                )
            )
            if job is not None:
                job.result = {**(job.result or {}), "point_id": point_id}
                job.updated_at = utcnow()
            s.flush()
            # The store write is the commit point of the agent's protocol; the row commits
            # right after it, and a failed write rolls the row back.
            self.store.put(self.full(machine_id, up.name), up.body)
        return True

    @staticmethod
    def _point_owner(
        s: Session, machine_id: str, item_id: str | None, job_id: str | None
    ) -> tuple[ProtectedItem | None, Job | None]:
        item = s.get(ProtectedItem, item_id) if item_id else None
        if item_id and (item is None or item.machine_id != machine_id):
            raise KluisError("ResourceNotFound", kind="protected item", name=item_id)
        job = s.get(Job, job_id) if job_id else None
        if job_id:
            if job is None or job.machine_id != machine_id or job.type != "Backup":
                raise KluisError("ResourceNotFound", kind="backup job", name=job_id)
            if job.status not in ACTIVE_JOB_STATUSES:
                raise KluisError("JobNotInProgress", job=job.id, state=job.status)
            if item is None and job.item_id:
                item = s.get(ProtectedItem, job.item_id)
            elif item is not None and job.item_id != item.id:
                raise KluisError("ValidationFailed", reason="the job belongs to another item")
        return item, job


def machine_exists(session: Session, machine_id: str) -> None:
    """ResourceNotFound for machines that are not registered."""
    machine = session.get(Machine, machine_id)
    if machine is None or machine.deleted_at is not None:
        raise KluisError("ResourceNotFound", kind="machine", name=machine_id)
