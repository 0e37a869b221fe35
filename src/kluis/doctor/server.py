"""``kluis doctor --vault``: the vault server's health, read from its configuration, database and store.

Run on the vault host with the vault's configuration. It only reads: the database is
opened without migrating (a doctor must not change the schema it checks), and the
store is asked whether an object exists. Checks, in order: the configuration loads;
the database answers and belongs to this vault (VaultDatabaseUnavailable); its schema
is at this Kluis's head revision (VaultMigrationsPending); the store answers
(StoreUnavailable); one vault process holds the scheduler lease, by whom and how
fresh (SchedulerLeaseNotHeld); no agent missed its heartbeats (AgentUnresponsive, and
UserErrorGuestAgentStatusUnavailable for machines never heard from); no protected item
failed its last ``FAILING_RUNS`` backups (ItemBackupsFailing).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kluis.catalog import KluisError
from kluis.doctor.framework import Check, NotApplicable, Result, catalog_checks, failed, passed, warned

FAILING_RUNS = 3
FINAL = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
PROBE_OBJECT = "doctor/probe"


@dataclass
class VaultDoctorContext:
    """The vault under examination (nothing is opened until a check needs it)."""

    config_path: Path
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    _cache: dict[str, Any] = field(default_factory=dict, init=False)

    @property
    def config(self) -> Any:
        """The VaultConfig (NotApplicable when it does not load; see vault-config)."""
        if "config" not in self._cache:
            from kluis.vault.config import VaultConfig

            try:
                self._cache["config"] = VaultConfig.load(self.config_path)
            except KluisError as exc:
                self._cache["config"] = exc
        cfg = self._cache["config"]
        if isinstance(cfg, KluisError):
            raise NotApplicable(f"the vault configuration cannot be used ({cfg.code}; see vault-config)")
        return cfg

    def config_error(self) -> KluisError | None:
        """Why the configuration does not load."""
        try:
            self.config  # noqa: B018 - loads and caches it
        except NotApplicable:
            error: KluisError = self._cache["config"]
            return error
        return None

    @property
    def db(self) -> Any:
        """The database, opened without migrating it."""
        if "db" not in self._cache:
            from kluis.vault.db.session import Database

            self._cache["db"] = Database(self.config.db_url)
        return self._cache["db"]

    def close(self) -> None:
        """Release the database's connections."""
        db = self._cache.pop("db", None)
        if db is not None:
            db.dispose()


def _redact(url: str) -> str:
    from kluis.vault.db.session import redact

    return redact(url)


def check_config(ctx: VaultDoctorContext) -> Result:
    """The vault configuration loads and is valid."""
    error = ctx.config_error()
    if error is not None:
        return failed(
            error, f"correct {error.params.get('reason', 'the named setting')} in {ctx.config_path}"
        )
    cfg = ctx.config
    return passed(f"vault {cfg.vault_name} ({cfg.vault_id}) at {cfg.url}", config=str(ctx.config_path))


def check_database(ctx: VaultDoctorContext) -> Result:
    """The database answers, and it belongs to this vault."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    cfg = ctx.config
    url = _redact(cfg.db_url)
    fix = f"check [database] url in {ctx.config_path} and that the database server runs"
    parsed = make_url(cfg.db_url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        # Connecting would create an empty file instead of reporting the missing one.
        error = KluisError(
            "VaultDatabaseUnavailable", url=url, reason=f"the file {parsed.database} does not exist"
        )
        return failed(error, fix)
    try:
        with ctx.db.read() as s:
            s.execute(text("SELECT 1"))
            owner = s.execute(text("SELECT value FROM vault_meta WHERE key = 'vault_id'")).scalar()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        if "vault_meta" in reason:
            owner = None  # an empty database: the migrations check says so
        else:
            return failed(KluisError("VaultDatabaseUnavailable", url=url, reason=reason), fix)
    if owner is not None and owner != cfg.vault_id:
        error = KluisError(
            "VaultDatabaseUnavailable", url=url, reason=f"it belongs to vault {owner}, not {cfg.vault_id}"
        )
        return failed(error, f"point [database] url in {ctx.config_path} at this vault's own database")
    return passed(f"{url} answers ({ctx.db.dialect})")


def check_migrations(ctx: VaultDoctorContext) -> Result:
    """The schema is at the revision this Kluis ships."""
    from kluis.vault.db.migrate import current_revision, head_revision

    current = current_revision(ctx.db)
    head = head_revision()
    if current != head:
        error = KluisError(
            "VaultMigrationsPending", url=_redact(ctx.config.db_url), current=current or "none", head=head
        )
        return failed(error, "systemctl restart kluis-vault (the vault migrates its database when it starts)")
    return passed(f"schema at revision {head}")


def check_store(ctx: VaultDoctorContext) -> Result:
    """The store answers a read (local directories must already exist)."""
    from kluis.stores import LocalStore, Store, open_store

    url = ctx.config.store_url
    fix = f"check [store] url in {ctx.config_path}, the store's credentials and that it is reachable"
    try:
        parts = urlsplit(url)
        if parts.scheme in ("", "file"):
            store: Store = LocalStore(parts.path if parts.scheme else url, create=False)
        else:
            store = open_store(url)
        try:
            store.exists(PROBE_OBJECT)
        finally:
            store.close()
    except KluisError as exc:
        return failed(exc, fix)
    return passed(f"{url} answers")


def _age(ctx: VaultDoctorContext, when: dt.datetime) -> str:
    seconds = (ctx.now - when).total_seconds()
    return f"{seconds:.0f} s ago" if seconds >= 0 else f"in {-seconds:.0f} s"


def check_lease(ctx: VaultDoctorContext) -> Result:
    """One vault process holds the scheduler lease, and renews it."""
    from kluis.vault import lease
    from kluis.vault.db.migrate import SCHEDULER_LEASE

    cfg = ctx.config
    held = lease.info(ctx.db, SCHEDULER_LEASE)
    if held.held(ctx.now) and held.expires_at is not None:
        renewed = held.expires_at - dt.timedelta(seconds=cfg.lease_ttl)
        acquired = f", holding it since {_age(ctx, held.acquired_at)}" if held.acquired_at else ""
        return passed(
            f"held by {held.holder}, renewed {_age(ctx, renewed)}{acquired}",
            holder=held.holder,
            expires_at=held.expires_at.isoformat(),
        )
    if held.holder and held.expires_at is not None:
        reason = f"{held.holder} stopped renewing it; it expired {_age(ctx, held.expires_at)}"
    else:
        reason = "the vault is stopped, or released the lease when it stopped"
    if not cfg.scheduler_enabled:
        reason += f"; this vault's own configuration has the scheduler switched off ({ctx.config_path})"
    error = KluisError("SchedulerLeaseNotHeld", vault=cfg.vault_name, reason=reason)
    return failed(error, "systemctl start kluis-vault (with `enabled = true` under [scheduler])")


def check_agents(ctx: VaultDoctorContext) -> Result:
    """Every registered machine's agent sends heartbeats."""
    from sqlalchemy import select

    from kluis.vault.db.models import Machine
    from kluis.vault.machines import status_of

    cfg = ctx.config
    window = cfg.heartbeat_interval * cfg.unresponsive_after
    with ctx.db.read() as s:
        machines = list(
            s.scalars(select(Machine).where(Machine.deleted_at.is_(None)).order_by(Machine.hostname))
        )
    silent, never = [], []
    for m in machines:
        status = status_of(m, cfg, ctx.now)
        if status == "Unresponsive" and m.last_heartbeat_at is not None:
            silent.append((m, int((ctx.now - m.last_heartbeat_at).total_seconds() // cfg.heartbeat_interval)))
        elif status == "Registered" and (ctx.now - m.registered_at).total_seconds() > window:
            never.append(m)
    details = {
        "unresponsive": [m.hostname for m, _ in silent],
        "never_heard_from": [m.hostname for m in never],
    }
    if silent:
        m, missed = silent[0]
        error = KluisError("AgentUnresponsive", machine=m.hostname, missed=missed)
        others = (
            f" ({len(silent)} machines in all: {', '.join(details['unresponsive'])})"
            if len(silent) > 1
            else ""
        )
        return failed(
            error,
            f"on {m.hostname}: `kluis doctor` and `systemctl restart kluis-agent`{others}",
            details=details,
        )
    if never:
        m = never[0]
        error = KluisError("UserErrorGuestAgentStatusUnavailable", machine=m.hostname, last_seen="never")
        return warned(
            error,
            f"on {m.hostname}: start the agent with `systemctl enable --now kluis-agent`",
            details=details,
        )
    if not machines:
        return passed("no machine is registered yet", machines=0)
    return passed(
        f"all {len(machines)} machine(s) sent a heartbeat in the last {window} s", machines=len(machines)
    )


def check_items(ctx: VaultDoctorContext) -> Result:
    """No protected item failed its last FAILING_RUNS backups."""
    from sqlalchemy import select

    from kluis.vault.db.models import Job, Machine, ProtectedItem

    failing: list[tuple[ProtectedItem, str, Job]] = []
    with ctx.db.read() as s:
        rows = s.execute(
            select(ProtectedItem, Machine.hostname)
            .join(Machine, Machine.id == ProtectedItem.machine_id)
            .where(ProtectedItem.state == "Protected")
            .order_by(ProtectedItem.name)
        ).all()
        for item, hostname in rows:
            last = list(
                s.scalars(
                    select(Job)
                    .where(Job.item_id == item.id, Job.type == "Backup", Job.status.in_(FINAL))
                    .order_by(Job.created_at.desc(), Job.id)
                    .limit(FAILING_RUNS)
                )
            )
            if len(last) == FAILING_RUNS and all(j.status == "Failed" for j in last):
                failing.append((item, hostname, last[0]))
    if not failing:
        return passed(f"no protected item failed its last {FAILING_RUNS} backups", items=len(rows))
    item, hostname, newest = failing[0]
    code = str((newest.error or {}).get("code") or "an unknown error")
    error = KluisError("ItemBackupsFailing", count=FAILING_RUNS, item=item.name, machine=hostname, code=code)
    return failed(
        error,
        f"kluis jobs show {newest.id}, then follow its actions and `kluis doctor` on {hostname}",
        details={"items": [{"item": i.name, "machine": h, "job": j.id} for i, h, j in failing]},
    )


def check_schedule(ctx: VaultDoctorContext) -> Result:
    """Every protected item's latest scheduled run, once its spread window is over, became a job."""
    from sqlalchemy import select

    from kluis.vault import lease
    from kluis.vault.db.migrate import SCHEDULER_LEASE
    from kluis.vault.db.models import Machine, Policy, ProtectedItem
    from kluis.vault.schedule import Schedule, item_delay, previous_run

    cfg = ctx.config
    # The scheduler creates a run's job up to `spread` seconds after it is due (each item has
    # its own offset), on its next tick; a minute more covers a busy database.
    slack = dt.timedelta(seconds=2 * cfg.scheduler_interval + 60)
    missed: list[tuple[str, str, dt.datetime]] = []
    with ctx.db.read() as s:
        rows = s.execute(
            select(ProtectedItem, Machine.hostname, Policy)
            .join(Machine, Machine.id == ProtectedItem.machine_id)
            .join(Policy, Policy.id == ProtectedItem.policy_id)
            .where(ProtectedItem.state == "Protected")
            .order_by(ProtectedItem.name)
        ).all()
        for item, hostname, policy in rows:
            delay = item_delay(item.id, cfg.schedule_spread)
            due = previous_run(Schedule.from_dict(policy.schedule), ctx.now - delay - slack)
            if due <= item.created_at:
                continue  # protection began after that run
            if item.last_slot_at is None or item.last_slot_at < due:
                missed.append((item.name, hostname, due))
    if not missed:
        return passed(f"the latest scheduled run of every protected item became a job ({len(rows)} items)")
    held = lease.info(ctx.db, SCHEDULER_LEASE)
    if not held.held(ctx.now):
        reason = "no vault process held the scheduler lease then or holds it now"
        if not cfg.scheduler_enabled:
            reason += f" (the scheduler is switched off in {ctx.config_path})"
        fix = "start the vault with `enabled = true` under [scheduler]: `systemctl start kluis-vault`"
    else:
        reason = f"the scheduler ({held.holder}) has not handled it; its log says why"
        fix = "journalctl -u kluis-vault, then `kluis backup now ITEM` for the item"
    name, hostname, due = missed[0]
    error = KluisError(
        "ScheduledBackupNotRun", item=f"{name} on {hostname}", due=due.isoformat(), reason=reason
    )
    return warned(
        error,
        fix,
        details={"items": [{"item": n, "machine": h, "due": d.isoformat()} for n, h, d in missed]},
    )


def check_overlap(ctx: VaultDoctorContext) -> Result:
    """No host has more than four of its disk items starting backups within one hour."""
    from sqlalchemy import select

    from kluis.vault.db.models import Machine, Policy, ProtectedItem
    from kluis.vault.schedule import MAX_STARTS_PER_HOUR, Schedule, crowded_hour, item_delay, runs_between

    spread = ctx.config.schedule_spread
    starts: dict[str, list[tuple[dt.datetime, str]]] = {}
    with ctx.db.read() as s:
        rows = s.execute(
            select(ProtectedItem, Machine.hostname, Policy)
            .join(Machine, Machine.id == ProtectedItem.machine_id)
            .join(Policy, Policy.id == ProtectedItem.policy_id)
            .where(ProtectedItem.state == "Protected", ProtectedItem.kind == "disks")
        ).all()
        for item, hostname, policy in rows:
            delay = item_delay(item.id, spread)
            # A week ahead meets every run of daily, weekly and hourly policies.
            for run in runs_between(
                Schedule.from_dict(policy.schedule), ctx.now, ctx.now + dt.timedelta(days=7)
            ):
                starts.setdefault(hostname, []).append((run + delay, item.name))
    crowded = []
    for hostname, host_starts in sorted(starts.items()):
        found = crowded_hour(host_starts)
        if found is not None:
            crowded.append((hostname, found[0], found[1]))
    if not crowded:
        return passed(
            f"no host starts more than {MAX_STARTS_PER_HOUR} disk backups within an hour",
            hosts=len(starts),
        )
    hostname, _, names = crowded[0]
    error = KluisError("ScheduleOverlapOnHost", count=len(names), host=hostname)
    return warned(
        error,
        "move some of these items to a policy that starts at least an hour later:"
        " `kluis policy create NAME --at HH:MM`, then `kluis items set-policy ITEM --policy NAME`",
        details={"hosts": [{"host": h, "from": f.isoformat(), "items": n} for h, f, n in crowded]},
    )


CHECKS: list[Check[VaultDoctorContext]] = [
    Check("vault-config", "Vault configuration", check_config, ("VaultConfigInvalid",)),
    Check("vault-database", "Database reachable", check_database, ("VaultDatabaseUnavailable",)),
    Check(
        "vault-migrations",
        "Database migrations current",
        check_migrations,
        ("VaultMigrationsPending",),
        requires=("vault-database",),
    ),
    Check(
        "vault-store",
        "Store reachable",
        check_store,
        ("StoreUnavailable", "StoreUrlInvalid"),
    ),
    Check(
        "scheduler-lease",
        "Scheduler lease held",
        check_lease,
        ("SchedulerLeaseNotHeld",),
        requires=("vault-migrations",),
    ),
    Check(
        "unresponsive-agents",
        "Agents sending heartbeats",
        check_agents,
        ("AgentUnresponsive", "UserErrorGuestAgentStatusUnavailable"),
        requires=("vault-migrations",),
    ),
    Check(
        "failing-items",
        "Items failing repeatedly",
        check_items,
        ("ItemBackupsFailing",),
        requires=("vault-migrations",),
    ),
    Check(
        "scheduled-runs",
        "Scheduled backups ran",
        check_schedule,
        ("ScheduledBackupNotRun",),
        requires=("vault-migrations",),
    ),
    Check(
        "schedule-overlap",
        "Disk backups spread over time per host",
        check_overlap,
        ("ScheduleOverlapOnHost",),
        requires=("vault-migrations",),
    ),
]
CATALOG_CHECKS = catalog_checks(CHECKS)
