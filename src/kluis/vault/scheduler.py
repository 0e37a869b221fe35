"""The scheduler: creates backup jobs at policy times and runs the vault's own jobs.

Runs in every vault process, but acts only while it holds the ``scheduler`` lease
(``lease``), so exactly one process schedules at a time; when the holder stops
renewing, another takes over after the lease's time to live.

Each tick (``Scheduler.tick``), for every protected item:
``run = schedule.due_run(policy, item.last_slot_at, now - delay)`` with the item's stable
``delay = schedule.spread_offset(item, spread)``; a run found becomes a backup job and
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

from sqlalchemy import select

from kluis.catalog import KluisError
from kluis.vault import jobs, lease, maintenance
from kluis.vault.context import VaultContext
from kluis.vault.db.migrate import SCHEDULER_LEASE
from kluis.vault.db.models import ACTIVE_JOB_STATUSES, Job, Machine, Policy, ProtectedItem
from kluis.vault.db.types import utcnow
from kluis.vault.schedule import Schedule, due_run, spread_offset

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
            # Policy ids, not Policy rows: loading an entity per item was half of a tick's time.
            rows = s.execute(
                select(ProtectedItem.id, ProtectedItem.last_slot_at, ProtectedItem.created_at, Policy.id)
                .join(Policy, Policy.id == ProtectedItem.policy_id)
                .join(Machine, Machine.id == ProtectedItem.machine_id)
                .where(ProtectedItem.state == "Protected", Machine.deleted_at.is_(None))
            ).all()
            policies = {p.id: p for p in s.scalars(select(Policy))}
            # The latest run before a moment is the same for all items of a policy with the same
            # delay: work it out once per (policy, moment), not once per item.
            latest: dict[tuple[str, dt.datetime], dt.datetime | None] = {}
            due: list[tuple[str, dt.datetime, dt.datetime]] = []
            for item_id, last, created, policy_id in rows:
                delay = dt.timedelta(seconds=spread_offset(item_id, spread) if spread > 0 else 0)
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
                ids = [item_id for item_id, _, _ in batch]
                running = set(
                    s.scalars(
                        select(Job.item_id).where(
                            Job.item_id.in_(ids), Job.type == "Backup", Job.status.in_(ACTIVE_JOB_STATUSES)
                        )
                    )
                )
                items = {i.id: i for i in s.scalars(select(ProtectedItem).where(ProtectedItem.id.in_(ids)))}
                for item_id, run, not_before in batch:
                    item = items.get(item_id)
                    if item is None or item.state != "Protected":
                        continue
                    if item.last_slot_at is not None and run <= item.last_slot_at:
                        continue  # handled meanwhile (another holder before a take-over)
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
        for machine_id in machines:
            self.ctx.notifier.notify(machine_id)
        if created or skipped:
            log.info("scheduler: %d backup jobs created, %d still running", created, skipped)
        return created, skipped

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
