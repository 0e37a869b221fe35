"""The scheduler: creates backup jobs at policy times and runs the vault's own jobs.

Runs in every vault process, but acts only while it holds the ``scheduler`` lease
(``lease``), so exactly one process schedules at a time; when the holder stops
renewing, another takes over after the lease's time to live.

Each tick (``Scheduler.tick``), for every protected item:
``run = schedule.due_run(policy, item.last_slot_at, now - delay)`` with the item's stable
``delay = schedule.item_delay(item, spread)``; a run found becomes a backup job and
the item's ``last_slot_at`` in the same transaction. However long the vault was down,
``due_run`` yields only the latest missed run, so missed runs are handled once. A run
that finds the item's previous backup still going is recorded as a failed job with
UserErrorBackupOperationInProgress (no alert), as the seeds describe.

The tick also fails jobs no agent picked up or that stopped reporting, and once a day
(at ``maintenance_time`` UTC) queues a Retention job; retention queues garbage
collection for the machines whose points it expired. Vault jobs run one at a time on a
worker thread of the lease holder.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.vault import jobs, lease, maintenance
from kluis.vault.context import VaultContext
from kluis.vault.db.migrate import SCHEDULER_LEASE
from kluis.vault.db.models import ACTIVE_JOB_STATUSES, Job, Machine, Policy, ProtectedItem, new_id
from kluis.vault.db.types import utcnow
from kluis.vault.schedule import Schedule, due_run, item_delay, previous_run

log = logging.getLogger("kluis.vault.scheduler")
BATCH = 500
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Scheduler:
    """The lease-guarded scheduler loop of one vault process."""

    def __init__(self, ctx: VaultContext) -> None:
        self.ctx = ctx
        self._stop = threading.Event()
        self._wake_worker = threading.Event()
        self._threads: list[threading.Thread] = []
        self._schedules: dict[tuple[str, str], Schedule] = {}
        self.holding = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop and the vault-job worker threads."""
        for target, name in ((self._loop, "kluis-scheduler"), (self._worker, "kluis-vault-jobs")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop, and give the lease up so another process takes over at once."""
        self._stop.set()
        self._wake_worker.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.holding:
            try:
                lease.release(self.ctx.db, SCHEDULER_LEASE, self.ctx.holder)
            except Exception:
                log.exception("releasing the scheduler lease failed")
            self.holding = False

    def _loop(self) -> None:
        cfg = self.ctx.config
        while not self._stop.is_set():
            try:
                self.holding = lease.try_acquire(self.ctx.db, SCHEDULER_LEASE, self.ctx.holder, cfg.lease_ttl)
                if self.holding:
                    self.tick(utcnow())
                    self._wake_worker.set()
            except Exception:
                self.holding = False
                log.exception("scheduler tick failed")
            self._stop.wait(cfg.scheduler_interval)

    def _worker(self) -> None:
        cfg = self.ctx.config
        stale = dt.timedelta(seconds=max(cfg.lease_ttl * 2, 60))
        retry = dt.timedelta(seconds=cfg.scheduler_interval)
        while not self._stop.is_set():
            self._wake_worker.wait(cfg.scheduler_interval)
            self._wake_worker.clear()
            while self.holding and not self._stop.is_set():
                try:
                    job_id = maintenance.claim_vault_job(self.ctx, utcnow(), stale)
                    if job_id is None:
                        break
                    maintenance.run_vault_job(self.ctx, job_id, retry)
                except Exception:
                    log.exception("running a vault job failed")
                    break

    # -- one tick --------------------------------------------------------------------------

    def tick(self, now: dt.datetime) -> dict[str, int]:
        """Everything the scheduler does at ``now``; returns counts (for logs and tests)."""
        with self.ctx.db.write() as s:
            expired = jobs.expire_stale(s, self.ctx.config, now)
        created, skipped = self.schedule_backups(now)
        queued = self.queue_maintenance(now)
        return {"expired": expired, "created": created, "in_progress": skipped, "maintenance": queued}

    def _schedule(self, policy: Policy) -> Schedule:
        key = (policy.id, policy.updated_at.isoformat())
        sched = self._schedules.get(key)
        if sched is None:
            sched = Schedule.from_dict(policy.schedule)
            self._schedules = {k: v for k, v in self._schedules.items() if k[0] != policy.id}
            self._schedules[key] = sched
        return sched

    def due_items(self, now: dt.datetime) -> list[tuple[str, dt.datetime, dt.datetime]]:
        """(item id, run, not-before) for every protected item with a run due at ``now``."""
        spread = self.ctx.config.schedule_spread
        with self.ctx.db.read() as s:
            policies = {p.id: p for p in s.scalars(select(Policy))}
            # An item's run is the latest at now minus its delay, never later than the policy's
            # latest run at ``now``: only items that have not handled that run can be due. So
            # the database hands out those alone, and most ticks (every 10 s) read no item at
            # all instead of all of them (10,000 rows a tick took a tenth of a core).
            candidates = []
            for policy in policies.values():
                latest_run = previous_run(self._schedule(policy), now)
                candidates.append(
                    (ProtectedItem.policy_id == policy.id)
                    & (
                        (ProtectedItem.last_slot_at < latest_run)
                        | (ProtectedItem.last_slot_at.is_(None) & (ProtectedItem.created_at < latest_run))
                    )
                )
            if not candidates:
                return []
            # Policy ids, not Policy rows: loading an entity per item was half of a tick's time.
            rows = s.execute(
                select(ProtectedItem.id, ProtectedItem.last_slot_at, ProtectedItem.created_at, Policy.id)
                .join(Policy, Policy.id == ProtectedItem.policy_id)
                .join(Machine, Machine.id == ProtectedItem.machine_id)
                .where(ProtectedItem.state == "Protected", Machine.deleted_at.is_(None), or_(*candidates))
            ).all()
            # The latest run before a moment is the same for all items of a policy with the same
            # delay: work it out once per (policy, moment), not once per item.
            latest: dict[tuple[str, dt.datetime], dt.datetime | None] = {}
            due: list[tuple[str, dt.datetime, dt.datetime]] = []
            for item_id, last, created, policy_id in rows:
                delay = item_delay(item_id, spread)
                at = now - delay
                key = (policy_id, at)
                if key not in latest:
                    latest[key] = due_run(self._schedule(policies[policy_id]), EPOCH, at)
                run, handled = latest[key], last or created
                # due_run's rule: the latest run in (handled, at], if there is one.
                if run is not None and at > handled and run > handled:
                    due.append((item_id, run, run + delay))
        return due

    def schedule_backups(self, now: dt.datetime) -> tuple[int, int]:
        """Create the due backup jobs; returns (created, found still running)."""
        due = self.due_items(now)
        created = skipped = 0
        machines: set[str] = set()
        for start in range(0, len(due), BATCH):
            batch = due[start : start + BATCH]
            with self.ctx.db.write() as s:
                try:
                    # One savepoint for the whole batch: the fast path inserts every job at once.
                    with s.begin_nested():
                        made, over, touched = self._schedule_batch(s, batch, now)
                except IntegrityError:
                    # A backup of one of these items started (another process) after the check:
                    # the batch again, one savepoint per job, so only that item is skipped.
                    made, over, touched = self._schedule_batch_each(s, batch, now)
                created += made
                skipped += over
                machines |= touched
        for machine_id in machines:
            self.ctx.notifier.notify(machine_id)
        if created or skipped:
            log.info("scheduler: %d backup jobs created, %d still running", created, skipped)
        return created, skipped

    def _batch_state(
        self, s: Session, batch: list[tuple[str, dt.datetime, dt.datetime]]
    ) -> tuple[set[str], dict[str, tuple[str, str, dt.datetime | None]]]:
        """The items of a batch that have a backup running, and (machine, state, last slot) per item."""
        ids = [item_id for item_id, _, _ in batch]
        running = set(
            s.scalars(
                select(Job.item_id).where(
                    Job.item_id.in_(ids), Job.type == "Backup", Job.status.in_(ACTIVE_JOB_STATUSES)
                )
            )
        )
        # Locked (PostgreSQL) so a scheduler that took the lease over meanwhile cannot
        # create the same run's jobs from a stale read.
        rows = s.execute(
            select(
                ProtectedItem.id, ProtectedItem.machine_id, ProtectedItem.state, ProtectedItem.last_slot_at
            )
            .where(ProtectedItem.id.in_(ids))
            .with_for_update()
        ).all()
        return {str(r) for r in running}, {r[0]: (r[1], r[2], r[3]) for r in rows}

    def _schedule_batch(
        self, s: Session, batch: list[tuple[str, dt.datetime, dt.datetime]], now: dt.datetime
    ) -> tuple[int, int, set[str]]:
        """Jobs for a batch in two statements (insert all, update all); IntegrityError on a race.

        An ORM flush per job (a savepoint, an insert and an update each) was three quarters
        of a 10,000-item tick.
        """
        running, items = self._batch_state(s, batch)
        stamp = utcnow()
        jobs_rows: list[dict[str, Any]] = []
        slots: list[dict[str, Any]] = []
        overlaps: list[str] = []
        machines: set[str] = set()
        for item_id, run, not_before in batch:
            found = items.get(item_id)
            if found is None or found[1] != "Protected":
                continue
            machine_id, _state, last_slot = found
            if last_slot is not None and run <= last_slot:
                continue  # handled meanwhile (another holder before a take-over)
            slots.append({"id": item_id, "last_slot_at": run})
            if item_id in running:
                overlaps.append(item_id)
                continue
            jobs_rows.append(
                {
                    "id": new_id(),
                    "type": "Backup",
                    "status": "InProgress",
                    "trigger": "Scheduled",
                    "item_id": item_id,
                    "machine_id": machine_id,
                    "params": {"scheduled_for": run.isoformat()},
                    "created_by": "scheduler",
                    "created_at": stamp,
                    "updated_at": stamp,
                    "not_before": min(not_before, now),
                    "retain_until": None,
                    "progress": {},
                }
            )
            machines.add(machine_id)
        if slots:
            s.execute(update(ProtectedItem), slots)
        if jobs_rows:
            s.execute(insert(Job), jobs_rows)
        for item_id in overlaps:
            item = s.get(ProtectedItem, item_id)
            if item is not None:
                self._record_overlap(s, item)
        return len(jobs_rows), len(overlaps), machines

    def _schedule_batch_each(
        self, s: Session, batch: list[tuple[str, dt.datetime, dt.datetime]], now: dt.datetime
    ) -> tuple[int, int, set[str]]:
        """Jobs for a batch one at a time, each in its own savepoint (after a race)."""
        running, _ = self._batch_state(s, batch)
        created = skipped = 0
        machines: set[str] = set()
        ids = [item_id for item_id, _, _ in batch]
        items = {i.id: i for i in s.scalars(select(ProtectedItem).where(ProtectedItem.id.in_(ids)))}
        for item_id, run, not_before in batch:
            item = items.get(item_id)
            if item is None or item.state != "Protected":
                continue
            if item.last_slot_at is not None and run <= item.last_slot_at:
                continue
            item.last_slot_at = run
            if item_id in running:
                self._record_overlap(s, item)
                skipped += 1
                continue
            try:
                jobs.start_backup(
                    s,
                    item,
                    trigger="Scheduled",
                    created_by="scheduler",
                    not_before=min(not_before, now),
                    scheduled_for=run,
                )
            except KluisError as exc:
                if exc.code != "UserErrorBackupOperationInProgress":
                    raise
                self._record_overlap(s, item)
                skipped += 1
                continue
            created += 1
            machines.add(item.machine_id)
        return created, skipped, machines

    @staticmethod
    def _record_overlap(s: Any, item: ProtectedItem) -> None:
        holder = jobs.running_backup(s, item.id)
        error = KluisError(
            "UserErrorBackupOperationInProgress", item=item.name, job=holder.id if holder else "?"
        )
        jobs.record_failed_start(s, item, error, trigger="Scheduled")

    def queue_maintenance(self, now: dt.datetime) -> int:
        """Queue the daily Retention job once the maintenance time has passed."""
        hh, mm = (int(x) for x in self.ctx.config.maintenance_time.split(":"))
        due_at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if now < due_at:
            return 0
        with self.ctx.db.write() as s:
            done = s.scalar(
                select(Job.id).where(
                    Job.type == "Retention", Job.trigger == "Scheduled", Job.created_at >= due_at
                )
            )
            pending = s.scalar(
                select(Job.id).where(Job.type == "Retention", Job.status.in_(ACTIVE_JOB_STATUSES))
            )
            if done is not None or pending is not None:
                return 0
            maintenance.queue_retention(s, created_by="scheduler")
        return 1
