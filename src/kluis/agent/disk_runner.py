"""Disk backup jobs: the snapshot extension's path from install to a recovery point.

For an item of kind ``disks`` the agent:

1. makes sure the snapshot extension the vault serves is installed, intact and loaded
   (``ExtensionManager.ensure``; its handler state goes out with the heartbeats);
2. phase "Take snapshot": quiesces (the agent's ``quiesce.toml`` when present, else
   freeze only, always with the watchdog), snapshots with the provider chosen for the
   disks, thaws, and keeps the snapshot as an instant recovery point;
3. phase "Transfer data to vault": runs the engine's ``DiskBackup`` against the
   item's previous recovery point, reading only the extents the provider reports
   as changed when the previous kept snapshot belongs to that point;
4. records the consistency on the point (header and manifest) and in the job result.

What an item's ``disks`` name:

- ``/dev/...``: block devices of this machine (one ``HostMachine``);
- a plain name: the VM described by ``<agent config dir>/vms/<name>.toml``
  (``ConfigMachine``; see docs/snapshots.md for the file).

An internal error during the transfer is retried once; if it happens again the job
fails with ``BackUpOperationFailed``.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kluis.agent import scratch
from kluis.agent.config import env_seconds
from kluis.agent.keys import open_own, own_kek
from kluis.agent.net import API
from kluis.agent.store import (
    AgentVaultStore,
    PackJournal,
    ResilientStore,
    adopt_unindexed_packs,
    ensure_repository,
)
from kluis.catalog import KluisError
from kluis.engine.disk import DiskBackup, DiskSource
from kluis.engine.repository import Repository

if TYPE_CHECKING:
    from kluis.agent.runner import Job, Outcome

log = logging.getLogger("kluis.agent.disks")

SNAPSHOT_PHASE = "Take snapshot"
TRANSFER_PHASE = "Transfer data to vault"
EXTENSION = "snapshot"
SUPPORTED_API = 1
TRANSFER_ATTEMPTS = 2
DEFAULT_INSTANT_DAYS = 2
VMS_DIR = "vms"
QUIESCE_FILE = "quiesce.toml"
CLEANUP_ENV = "KLUIS_AGENT_CLEANUP_SECONDS"


# -- places -------------------------------------------------------------------------------


def config_dir(cfg_path: Path | None) -> Path:
    """The agent's configuration directory (VM files and quiesce.toml live there)."""
    from kluis.agent.config import DEFAULT_CONFIG_DIR

    return cfg_path.parent if cfg_path is not None else DEFAULT_CONFIG_DIR


def instant_root(scratch_dir: Path) -> Path:
    """Where the agent keeps the restore point collections (one folder per item)."""
    return scratch_dir / "instant-points"


def extensions_enabled(cfg_path: Path | None) -> bool:
    """``[extensions] enable`` in agent.toml (default true)."""
    if cfg_path is None or not cfg_path.exists():
        return True
    try:
        doc = tomllib.loads(cfg_path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return True  # the daemon already loaded this file; a later edit is read at its next start
    value = doc.get("extensions", {}).get("enable", True)
    return value is not False


# -- the extension -------------------------------------------------------------------------


def load_extension(job: Job) -> Any:
    """Install (when needed), verify and import the snapshot extension the vault serves."""
    from kluis.agent.extensions.snapshot import ExtensionManager

    cfg = job.env.cfg
    layout = scratch.Layout(cfg.scratch)
    manager = ExtensionManager(
        layout.extensions,
        machine=cfg.hostname,
        enabled=extensions_enabled(cfg.path),
        config_path=str(cfg.path or config_dir(None) / "agent.toml"),
    )
    manager.check_enabled()
    client = job.env.client
    info = client.call("GET", f"/extensions/{EXTENSION}", retries=2)
    url = str(info["url"])

    def fetch() -> bytes:
        response = client.http.get(API + url)
        if response.status_code >= 300:
            raise KluisError(
                "ExtensionOperationFailedForManagedDisks",
                extension=EXTENSION,
                machine=cfg.hostname,
                reason=f"the vault answered {response.status_code} to the download",
            )
        return response.content

    manager.ensure(EXTENSION, str(info["version"]), str(info["sha256"]), fetch, url=cfg.vault_url + API + url)
    module = manager.load(EXTENSION)
    if getattr(module, "EXTENSION_API", None) != SUPPORTED_API:
        raise KluisError(
            "ExtensionOperationFailedForManagedDisks",
            extension=EXTENSION,
            machine=cfg.hostname,
            reason=f"it offers API {getattr(module, 'EXTENSION_API', '?')}, this agent needs {SUPPORTED_API}",
        )
    return module


def machine_for(ext: Any, item: dict[str, Any], cfg_path: Path | None, hostname: str) -> Any:
    """The Machine (extension protocol) whose disks the item protects."""
    names = [str(d) for d in (item.get("spec") or {}).get("disks") or []]
    item_name = str(item.get("name") or item.get("id"))
    devices = [n for n in names if n.startswith("/dev/")]
    vms = [n for n in names if not n.startswith("/dev/")]
    if "all" in vms or (devices and vms) or len(vms) > 1 or not names:
        raise KluisError(
            "AgentJobUnsupported",
            job=str(item.get("id")),
            what="a disks item that is not a list of block devices or one VM name",
        )
    if vms:
        path = config_dir(cfg_path) / VMS_DIR / f"{vms[0]}.toml"
        if not path.exists():
            raise KluisError("ProtectedMachineNotFound", kind="VM", name=vms[0], item=item_name)
        return ext.ConfigMachine(path)
    disks = [ext.DiskRef(os.path.basename(d), d, "block") for d in devices]
    return ext.HostMachine(hostname, disks)


def quiesce_config(ext: Any, cfg_path: Path | None) -> Any:
    """The agent's quiesce.toml (root-owned 0600) when there is one; else freeze only."""
    path = config_dir(cfg_path) / QUIESCE_FILE
    return ext.QuiesceConfig.load(path) if path.exists() else ext.QuiesceConfig()


def cleanup_seconds() -> float | None:
    """``KLUIS_AGENT_CLEANUP_SECONDS``: the time budget of the clean-up before a snapshot.

    None (unset or not a number of seconds >= 0) keeps the collection's default of 300 s;
    0 deletes one expired point per backup.
    """
    return env_seconds(CLEANUP_ENV, allow_zero=True)


def instant_days(job: Job) -> int:
    """The policy's instant recovery point retention (days): the job's ``instant_days`` param.

    The vault puts the item's policy value in every disk backup's params. Only a job from
    a vault that predates that (no param) falls back to the default; a value outside 1-5
    is refused by the collection (ValidationFailed) rather than silently replaced.
    """
    value = (job.params or {}).get("instant_days")
    if value is None:
        log.warning("job %s has no instant_days; keeping its snapshot %d days", job.id, DEFAULT_INSTANT_DAYS)
        return DEFAULT_INSTANT_DAYS
    if isinstance(value, bool) or not isinstance(value, int):
        raise KluisError("ValidationFailed", reason=f"instant_days must be a whole number, not {value!r}")
    return value


# -- the job --------------------------------------------------------------------------------


def _previous(
    repo: Repository, item_id: str, disk_names: set[str], base_point: str | None
) -> tuple[str | None, bool]:
    """The item's previous disk point, and whether it is ``base_point`` (changed extents apply)."""
    points = [
        p
        for p in repo.list_points()
        if p.kind == "disk" and p.header.get("item") == item_id and p.header.get("status") == "completed"
    ]
    ids = {p.id for p in points}
    if base_point is not None and base_point in ids:
        return base_point, True
    return (points[-1].id if points else None), False


def run_disk_backup(job: Job) -> Outcome:
    """A backup job of a disks item; raises KluisError for the job's failure."""
    from kluis.agent.runner import MAX_WARNINGS, Outcome, check_hostname, coded

    env, cfg = job.env, job.env.cfg
    item_id = str(job.item["id"])
    check_hostname(env)
    checks = scratch.check_before_job(cfg.scratch, item_id=item_id, paths=[])
    layout = checks.layout
    if checks.checksums is not None:
        checks.checksums.close()  # file backups only
    own_kek(cfg)
    job.reporter.set_phase(SNAPSHOT_PHASE)
    job.reporter.note("installing or checking the snapshot extension")
    ext = load_extension(job)
    machine = machine_for(ext, job.item, cfg.path, cfg.hostname)
    collection = ext.RestorePointCollection(item_id, instant_root(cfg.scratch), machine=machine.name)
    budget = cleanup_seconds()
    if budget is not None:
        collection.cleanup_seconds = budget  # an attribute: older extension builds ignore it
    base = collection.latest()
    job.reporter.note("quiescing and taking the snapshot")
    keep_days = instant_days(job)
    started = time.monotonic()
    try:
        result = ext.take_snapshot(
            machine,
            item=item_id,
            quiesce=quiesce_config(ext, cfg.path),
            collection=collection,
            retention_days=keep_days,
        )
    except KluisError:
        raise
    except Exception as exc:
        # The extension ended without a status we can read: say so with the seeds' code.
        ref = secrets.token_hex(6)
        log.error("snapshot task of job %s ended without a status (%s)", job.id, ref, exc_info=exc)
        raise KluisError(
            "GuestAgentSnapshotTaskStatusError",
            machine=cfg.hostname,
            seconds=round(time.monotonic() - started),
        ) from exc
    snapshot_seconds = time.monotonic() - started
    # The clean-up before the snapshot has a time budget; points it did not reach are
    # left for the next run and reported as a warning (an extension installed before
    # the budget existed has no ``last_cleanup``).
    cleanup = getattr(collection, "last_cleanup", None)
    cleanup_warning = cleanup.warning() if cleanup is not None else None
    job.reporter.note(None)
    store: ResilientStore | None = None
    try:
        journal = PackJournal(layout.cache(cfg.machine_id) / "unindexed-packs")
        inner = AgentVaultStore(cfg, item_id=item_id, job_id=job.id, buckets=env.buckets)
        store = ResilientStore(
            inner,
            journal=journal,
            should_stop=job.should_stop,
            outage_limit=env.outage_limit,
            on_wait=job.reporter.note_outage,
            item=str(job.item.get("name") or item_id),
        )
        job._wait_for_mounts(item_id)
        ensure_repository(cfg, store=store)
        repo = open_own(cfg, store, layout.cache(cfg.machine_id))
        adopted = adopt_unindexed_packs(repo, store, journal)
        names = {d.name for d in result.snapshot.disks}
        base_point = base.recovery_point if base is not None else None
        previous, exact = _previous(repo, item_id, names, base_point)
        use_extents = (
            exact and result.previous is not None and base is not None and result.previous.id == base.id
        )
        sources = [
            DiskSource(d.name, d.read_path, result.changed_extents(d.name) if use_extents else None)
            for d in result.snapshot.disks
        ]
        job.reporter.set_phase(TRANSFER_PHASE)
        backup_result = None
        for attempt in range(1, TRANSFER_ATTEMPTS + 1):
            backup = DiskBackup(
                repo,
                sources,
                previous_point=previous,
                progress=job.reporter.update,
                should_stop=job.should_stop,
                item=item_id,
                hostname=cfg.hostname,
                consistency=str(result.consistency),
            )
            job.reporter.update(backup.progress)
            try:
                backup_result = backup.run()
                break
            except KluisError:
                raise
            except Exception as exc:
                if job.should_stop():
                    raise
                ref = secrets.token_hex(6)
                log.error(
                    "disk transfer of job %s failed (attempt %d, %s)", job.id, attempt, ref, exc_info=exc
                )
                if attempt == TRANSFER_ATTEMPTS:
                    raise KluisError(
                        "BackUpOperationFailed",
                        item=job.item.get("name", item_id),
                        attempts=attempt,
                        reason=f"internal error, reference {ref}",
                    ) from exc
        assert backup_result is not None
        job.reporter.update(backup.progress)
    except BaseException:
        # The snapshot stays only as long as a recovery point refers to it.
        if result.kept:
            collection.remove(result.snapshot.id)
        else:
            result.release()
        raise
    finally:
        if store is not None:
            store.close()
    if result.kept:
        collection.set_recovery_point(result.snapshot.id, backup_result.point_id)
    else:
        result.release()
    stats = backup_result.as_dict()
    stats.update(
        snapshot=result.summary(),
        consistency=str(result.consistency),
        provider=result.snapshot.provider,
        snapshot_seconds=round(snapshot_seconds, 3),
        changed_extents_used=use_extents,
        previous_point=previous,
        instant_points=len(collection.points()),
        instant_days=keep_days,
        instant_cleaned_up=list(result.cleaned_up),
        adopted_blobs=adopted,
        network_retries=store.retries if store is not None else 0,
    )
    found = ([cleanup_warning] if cleanup_warning is not None else []) + list(result.warnings)
    warnings: list[dict[str, Any]] = [coded(w) for w in found[:MAX_WARNINGS]]
    return Outcome("CompletedWithWarnings" if warnings else "Completed", None, warnings, stats)
