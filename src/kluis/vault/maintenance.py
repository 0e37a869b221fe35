"""Retention and garbage collection as vault jobs (Retention, GarbageCollect).

Retention expires the recovery points each item's policy no longer keeps
(``retention.points_to_keep``), purges items soft-deleted more than 14 days ago, and
queues garbage collection for the machines it touched.

Garbage collection (``gc.run_gc``) follows the contract's safety rule without any
client lock: in ONE transaction on the machine's ``gc_state`` row it checks that no
backup of the machine has been handed to its agent and marks the repository as being
swept; while that mark stands (and its lease is renewed) no backup is handed out and
no index or recovery point is accepted for the machine. Packs younger than the grace
period are never touched, so an interrupted backup can resume and reuse them.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.engine.format import point_name
from kluis.vault import gc, jobs
from kluis.vault.context import VaultContext
from kluis.vault.db.models import (
    ACTIVE_JOB_STATUSES,
    Blob,
    GcState,
    IndexFile,
    Job,
    Machine,
    Pack,
    Policy,
    ProtectedItem,
    RecoveryPoint,
)
from kluis.vault.db.types import utcnow
from kluis.vault.repo import in_chunks, upsert_blobs
from kluis.vault.retention import RetentionRule, expired, points_to_keep

log = logging.getLogger("kluis.vault.maintenance")
# How long a sweep mark lasts without renewal; renewed every third of it while GC runs.
SWEEP_LEASE = dt.timedelta(minutes=2)
WAITING_PHASE = "Waiting for backups to finish"
# A running vault job is touched this often; claim_vault_job's stale limit must be well above it.
JOB_KEEPALIVE = dt.timedelta(seconds=15)


class GcBlocked(Exception):
    """A backup of the machine is running; the GC job waits and tries again later."""


def queue_gc(session: Session, machine_id: str | None, *, created_by: str) -> list[Job]:
    """GarbageCollect jobs for one machine or all of them (one pending job per machine at most)."""
    if machine_id:
        machine = session.get(Machine, machine_id)
        if machine is None or machine.deleted_at is not None:
            raise KluisError("ResourceNotFound", kind="machine", name=machine_id)
        targets = [machine_id]
    else:
        targets = list(session.scalars(select(Machine.id).where(Machine.deleted_at.is_(None))))
    pending = set(
        session.scalars(
            select(Job.machine_id).where(Job.type == "GarbageCollect", Job.status.in_(ACTIVE_JOB_STATUSES))
        )
    )
    out: list[Job] = []
    now = utcnow()
    for target in targets:
        if target in pending:
            existing = session.scalar(
                select(Job).where(
                    Job.type == "GarbageCollect",
                    Job.machine_id == target,
                    Job.status.in_(ACTIVE_JOB_STATUSES),
                )
            )
            if existing is not None:
                out.append(existing)
            continue
        job = Job(
            type="GarbageCollect",
            status="InProgress",
            trigger="OnDemand" if created_by != "scheduler" else "Scheduled",
            machine_id=target,
            created_by=created_by,
            created_at=now,
            updated_at=now,
            not_before=now,
            progress={},
        )
        session.add(job)
        out.append(job)
    session.flush()
    return out


def queue_retention(session: Session, *, created_by: str) -> Job:
    """A Retention job (or the one already waiting)."""
    existing = session.scalar(select(Job).where(Job.type == "Retention", Job.status.in_(ACTIVE_JOB_STATUSES)))
    if existing is not None:
        return existing
    now = utcnow()
    job = Job(
        type="Retention",
        status="InProgress",
        trigger="OnDemand" if created_by != "scheduler" else "Scheduled",
        created_by=created_by,
        created_at=now,
        updated_at=now,
        not_before=now,
        progress={},
    )
    session.add(job)
    session.flush()
    return job


# -- retention -------------------------------------------------------------------------------


def expire_point(ctx: VaultContext, point_id: str) -> None:
    """Mark a point expired, then remove its object (GC frees its data and reference list)."""
    with ctx.db.write() as s:
        point = s.get(RecoveryPoint, point_id)
        if point is None or point.state != "Available":
            return
        point.state = "Expired"
        point.expired_at = utcnow()
        machine_id = point.machine_id
    ctx.store.delete(ctx.repo_prefix(machine_id) + point_name(point_id))


def _item_expiries(s: Session, item: ProtectedItem, now: dt.datetime) -> list[str]:
    rows = s.execute(
        select(RecoveryPoint.id, RecoveryPoint.time, RecoveryPoint.retain_until, RecoveryPoint.trigger).where(
            RecoveryPoint.item_id == item.id, RecoveryPoint.state == "Available"
        )
    ).all()
    if not rows:
        return []
    if item.state == "SoftDeleted" and item.purge_after is not None and item.purge_after <= now:
        return [r.id for r in rows]
    if item.state != "Protected" or item.policy_id is None:
        return []  # stopped with "retain data": every point stays until someone decides
    policy = s.get(Policy, item.policy_id)
    if policy is None:
        return []
    rule = RetentionRule.from_dict(policy.retention)
    pairs = [(r.id, r.time) for r in rows]
    on_demand = {r.id: r.retain_until for r in rows if r.retain_until is not None}
    kept = points_to_keep(pairs, rule, now, policy.timezone, on_demand)
    return expired(pairs, kept)


def run_retention(ctx: VaultContext, job: Job, now: dt.datetime | None = None) -> dict[str, Any]:
    """Expire points policies no longer keep, purge old soft-deleted items, queue GC."""
    now = now or utcnow()
    with ctx.db.read() as s:
        item_ids = list(s.scalars(select(ProtectedItem.id).where(ProtectedItem.state != "Deleted")))
    expired_count = 0
    purged = 0
    machines: set[str] = set()
    for item_id in item_ids:
        with ctx.db.read() as s:
            item = s.get(ProtectedItem, item_id)
            if item is None:
                continue
            victims = _item_expiries(s, item, now)
            machine_id = item.machine_id
            purge = item.state == "SoftDeleted" and item.purge_after is not None and item.purge_after <= now
        for point_id in victims:
            expire_point(ctx, point_id)
            expired_count += 1
            machines.add(machine_id)
        if purge:
            with ctx.db.write() as s:
                item = s.get(ProtectedItem, item_id)
                if item is not None and item.state == "SoftDeleted":
                    item.state = "Deleted"
                    purged += 1
                    machines.add(machine_id)
    with ctx.db.write() as s:
        for machine_id in sorted(machines):
            queue_gc(s, machine_id, created_by="retention")
    return {"points_expired": expired_count, "items_purged": purged, "machines_to_collect": len(machines)}


# -- garbage collection ----------------------------------------------------------------------


def begin_sweep(ctx: VaultContext, machine_id: str, job_id: str, now: dt.datetime | None = None) -> bool:
    """Mark the repository as being swept, in the transaction that checks no backup runs.

    GcBlocked when a backup of the machine was handed to its agent, or another vault
    process is sweeping it. True when an earlier sweep was cut short (its mark is still
    there): the store may then lack packs the database still lists.
    """
    now = now or utcnow()
    with ctx.db.write() as s:
        state = s.scalar(select(GcState).where(GcState.machine_id == machine_id).with_for_update())
        if state is None:
            state = GcState(machine_id=machine_id)
            s.add(state)
            s.flush()
        if state.sweeping and state.lease_until and state.lease_until > now and state.holder != ctx.holder:
            raise GcBlocked(f"another vault process ({state.holder}) is sweeping this repository")
        running = s.scalar(
            select(Job.id).where(
                Job.machine_id == machine_id,
                Job.type == "Backup",
                Job.status.in_(ACTIVE_JOB_STATUSES),
                Job.dispatched_at.is_not(None),
            )
        )
        if running is not None:
            raise GcBlocked(f"backup job {running} is running")
        cut_short = bool(state.sweeping)
        state.sweeping = True
        state.holder = ctx.holder
        state.job_id = job_id
        state.started_at = now
        state.lease_until = now + SWEEP_LEASE
    return cut_short


def end_sweep(ctx: VaultContext, machine_id: str, *, completed: bool) -> None:
    """Clear the sweep mark (ours only)."""
    with ctx.db.write() as s:
        state = s.scalar(select(GcState).where(GcState.machine_id == machine_id).with_for_update())
        if state is None or state.holder != ctx.holder:
            return
        state.sweeping = False
        state.lease_until = None
        state.holder = None
        state.job_id = None
        if completed:
            state.last_gc_at = utcnow()


@contextmanager
def _every(seconds: float, action: Callable[[], None], name: str) -> Iterator[None]:
    """Run ``action`` every ``seconds`` on a thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            try:
                action()
            except Exception:  # keep trying; the work itself decides the job's fate
                log.exception("%s failed", name)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _renewing(ctx: VaultContext, machine_id: str) -> AbstractContextManager[None]:
    """Keep the sweep mark alive while GC runs."""

    def renew() -> None:
        with ctx.db.write() as s:
            s.execute(
                update(GcState)
                .where(GcState.machine_id == machine_id, GcState.holder == ctx.holder)
                .values(lease_until=utcnow() + SWEEP_LEASE)
            )

    return _every(SWEEP_LEASE.total_seconds() / 3, renew, f"renew sweep mark of {machine_id}")


def _job_alive(ctx: VaultContext, job_id: str) -> AbstractContextManager[None]:
    """Touch a running vault job, so no other vault process takes it for abandoned."""

    def touch() -> None:
        with ctx.db.write() as s:
            s.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow()))

    return _every(JOB_KEEPALIVE.total_seconds(), touch, f"keep job {job_id} alive")


def _remove_expired_point_objects(ctx: VaultContext, machine_id: str) -> None:
    """Point objects whose rows were expired (an interrupted retention) must not keep data alive."""
    prefix = ctx.repo_prefix(machine_id)
    present = {o.name[len(prefix) + len("points/") :] for o in ctx.store.list(prefix + "points/")}
    if not present:
        return
    with ctx.db.read() as s:
        gone = set(
            s.scalars(
                select(RecoveryPoint.id).where(
                    RecoveryPoint.machine_id == machine_id, RecoveryPoint.state != "Available"
                )
            )
        )
    for point_id in present & gone:
        ctx.store.delete(prefix + point_name(point_id))


def reconcile_packs(ctx: VaultContext, machine_id: str) -> int:
    """Mark pack rows whose objects the store no longer holds as deleted; how many.

    A sweep deletes packs from the store before it records that in the database. If it
    stops in between (a crash, a lost database), the rows would still say the blobs are
    held, so the vault would accept points and skip uploads for data that is gone. Blobs
    count as held only in packs whose row is not deleted, so marking the rows is enough.
    """
    present = gc.list_packs(ctx.store, ctx.repo_prefix(machine_id))
    now = utcnow()
    with ctx.db.write() as s:
        listed = s.scalars(
            select(Pack.pack_id).where(Pack.machine_id == machine_id, Pack.deleted_at.is_(None))
        ).all()
        gone = [pack_id for pack_id in listed if pack_id not in present]
        _mark_packs_deleted(s, machine_id, gone, now)
    if gone:
        log.warning("machine %s: %d pack(s) missing from the store marked deleted", machine_id, len(gone))
    return len(gone)


def _mark_packs_deleted(s: Session, machine_id: str, pack_ids: list[bytes], now: dt.datetime) -> None:
    """Mark pack rows deleted, a few hundred per statement (a sweep may remove thousands)."""
    for chunk in in_chunks(pack_ids):
        s.execute(
            update(Pack).where(Pack.machine_id == machine_id, Pack.pack_id.in_(chunk)).values(deleted_at=now)
        )


def _mark_index_files_deleted(s: Session, machine_id: str, names: list[str], now: dt.datetime) -> None:
    """Mark index-file rows deleted, a few hundred per statement, as for packs."""
    for chunk in in_chunks([name.split("/", 1)[1] for name in names]):
        s.execute(
            update(IndexFile)
            .where(IndexFile.machine_id == machine_id, IndexFile.index_id.in_(chunk))
            .values(deleted_at=now)
        )


def _record_result(ctx: VaultContext, machine_id: str, result: gc.GcResult) -> None:
    """Make the database agree with the repository GC left behind."""
    now = utcnow()
    with ctx.db.write() as s:
        _mark_packs_deleted(s, machine_id, list(result.packs_deleted), now)
        for pack_id, size in result.new_packs.items():
            row = s.get(Pack, (machine_id, pack_id))
            if row is None:
                s.add(Pack(machine_id=machine_id, pack_id=pack_id, size=size, created_at=now))
            else:
                row.size, row.created_at, row.deleted_at = size, now, None
        s.flush()
        # The new index is complete: blob rows are replaced by its entries.
        s.execute(delete(Blob).where(Blob.machine_id == machine_id))
        upsert_blobs(
            s,
            [
                {
                    "machine_id": machine_id,
                    "blob_id": e.id,
                    "pack_id": e.pack,
                    "type": e.type,
                    "offset": e.offset,
                    "length": e.length,
                    "raw_length": e.raw_length,
                    "deleted": False,
                }
                for e in result.index_entries
            ],
        )
        _mark_index_files_deleted(s, machine_id, list(result.index_files_deleted), now)
        if result.index_name:
            index_id = result.index_name.split("/", 1)[1]
            index_row = s.get(IndexFile, (machine_id, index_id))
            if index_row is None:
                s.add(IndexFile(machine_id=machine_id, index_id=index_id, entries=len(result.index_entries)))
            else:
                index_row.deleted_at, index_row.entries = None, len(result.index_entries)


def run_gc(ctx: VaultContext, job: Job, now: dt.datetime | None = None) -> dict[str, Any]:
    """One GarbageCollect job; GcBlocked when it has to wait for a backup."""
    assert job.machine_id is not None
    machine_id = job.machine_id
    cut_short = begin_sweep(ctx, machine_id, job.id, now)
    completed = False
    try:
        with _renewing(ctx, machine_id):
            if cut_short:
                reconcile_packs(ctx, machine_id)
            _remove_expired_point_objects(ctx, machine_id)
            with ctx.db.read() as s:
                created = dict(
                    s.execute(
                        select(Pack.pack_id, Pack.created_at).where(
                            Pack.machine_id == machine_id, Pack.deleted_at.is_(None)
                        )
                    ).all()
                )
            result = gc.run_gc(
                ctx.store,
                ctx.repo_prefix(machine_id),
                created,
                now or utcnow(),
                grace=dt.timedelta(hours=ctx.config.gc_grace_hours),
                repack_threshold=ctx.config.gc_repack_threshold,
            )
            _record_result(ctx, machine_id, result)
        completed = True
    finally:
        reconciled = completed
        if not completed:
            # The store may have lost packs already; the database must not go on listing them.
            # If this fails too, the sweep mark stays and the next sweep reconciles first.
            try:
                reconcile_packs(ctx, machine_id)
                reconciled = True
            except Exception:
                log.exception("machine %s: reconciling packs after a failed sweep failed", machine_id)
        if reconciled:
            end_sweep(ctx, machine_id, completed=completed)
    return {
        "bytes_freed": result.bytes_freed,
        "packs_deleted": len(result.packs_deleted),
        "packs_rewritten": len(result.packs_rewritten),
        "packs_written": len(result.new_packs),
        "blobs_copied": result.blobs_copied,
        "blobs_rescued": result.blobs_rescued,
        "blobs_dropped": result.blobs_dropped,
        "index_entries": len(result.index_entries),
        "refs_deleted": len(result.refs_deleted),
        "packs_left": {k.hex(): v for k, v in result.packs_left.items()},
    }


# -- running vault jobs ----------------------------------------------------------------------


def claim_vault_job(ctx: VaultContext, now: dt.datetime, stale_after: dt.timedelta) -> str | None:
    """Take the oldest waiting vault job (or one whose runner stopped reporting)."""
    with ctx.db.write() as s:
        job = s.scalar(
            select(Job)
            .where(
                Job.type.in_(jobs.VAULT_TYPES),
                Job.status == "InProgress",
                Job.not_before <= now,
                Job.dispatched_at.is_(None) | (Job.updated_at < now - stale_after),
            )
            .order_by(Job.not_before, Job.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if job is None:
            return None
        job.dispatched_at = now
        job.updated_at = now
        job.phase = "Running"
        job.params = {**(job.params or {}), "runner": ctx.holder}
        return job.id


def run_vault_job(ctx: VaultContext, job_id: str, retry_after: dt.timedelta) -> None:
    """Run one claimed vault job to its end (or put it back to wait for a backup)."""
    with ctx.db.read() as s:
        job = s.get(Job, job_id)
    if job is None:
        return
    try:
        with _job_alive(ctx, job_id):
            stats = run_retention(ctx, job) if job.type == "Retention" else run_gc(ctx, job)
    except GcBlocked as blocked:
        with ctx.db.write() as s:
            row = s.get(Job, job_id)
            if row is not None:
                row.dispatched_at = None
                row.phase = WAITING_PHASE
                row.progress = {"waiting_for": str(blocked)}
                row.not_before = utcnow() + retry_after
                row.updated_at = utcnow()
        return
    except KluisError as exc:
        log.warning("vault job %s failed: %s", job_id, exc.message)
        with ctx.db.write() as s:
            row = s.get(Job, job_id)
            if row is not None:
                jobs.fail(s, row, exc)
        return
    except Exception as exc:
        log.exception("vault job %s failed", job_id)
        with ctx.db.write() as s:
            row = s.get(Job, job_id)
            if row is not None:
                jobs.fail(s, row, KluisError("InternalError", ref=f"job {job_id}: {type(exc).__name__}"))
        return
    with ctx.db.write() as s:
        row = s.get(Job, job_id)
        if row is not None:
            now = utcnow()
            row.status = "Completed"
            row.phase = None
            row.ended_at = now
            row.updated_at = now
            row.progress = {"percent": 100.0}
            row.result = {"stats": stats}
