"""Disk restore jobs: a disk recovery point back to image files or block devices.

Where the disks go (the restore job's ``target_path``):

- a block device (``/dev/...``): the one disk named in ``paths`` (or the point's only
  disk) is written onto it;
- any other path: a directory; each disk becomes ``<target_path>/<disk name>``;
- none, with ``conflict = overwrite``: **replace** the item's own disks. Only while the
  machine is stopped (``UserErrorVmNotShutDown`` otherwise), and only after a snapshot
  of the current disks is kept as an instant recovery point, so the replaced content
  can still be restored.

``paths`` selects disks by name (empty: every disk of the point).

**Instant restore**: when the point's snapshot is still kept on this host (its
restore point collection links it to the point and its files exist), disks are
copied from that local snapshot (a reflink clone where the file system allows it)
instead of being downloaded from the vault. The job result says so
(``stats.instant = true``, ``stats.source = "local snapshot"``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kluis.agent import scratch
from kluis.agent.disk_runner import instant_root, load_extension, machine_for
from kluis.agent.keys import open_own, open_source
from kluis.agent.store import AgentVaultStore, ResilientStore
from kluis.catalog import KluisError
from kluis.engine.disk import DiskRestore, disks_of
from kluis.engine.disk_io import device_size

if TYPE_CHECKING:
    from kluis.agent.runner import Job, Outcome

FICLONE = 0x40049409  # linux/fs.h: share the source's extents (what cp --reflink does)
COPY_CHUNK = 8 * 1024 * 1024


def _is_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def clone_or_copy(source: str, target: str, disk: str = "") -> bool:
    """Copy ``source`` to ``target`` (file or device); True when it was a reflink clone.

    A block device target gets the same checks as a restore from the vault: it is opened
    exclusively (EBUSY while mounted or otherwise claimed) and must hold the whole disk,
    else nothing is written.
    """
    device = _is_device(target)
    # O_EXCL on a block device fails while it is mounted; on a file it is not wanted (overwrite).
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_EXCL if device else os.O_CREAT | os.O_TRUNC)
    with open(source, "rb") as src:
        try:
            fd = os.open(target, flags, 0o600)
        except OSError as exc:
            raise KluisError("RestoreTargetInvalid", target=target, reason=exc.strerror or str(exc)) from None
        with os.fdopen(fd, "wb") as dst:
            if device:
                size = os.fstat(src.fileno()).st_size
                room = device_size(dst.fileno())
                if room < size:
                    raise KluisError(
                        "DiskRestoreTargetTooSmall", target=target, target_size=room, disk=disk, size=size
                    )
            else:
                try:
                    fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
                    return True
                except OSError:
                    pass  # another file system, or no reflink: copy the bytes
            try:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            except OSError as exc:
                raise KluisError(
                    "RestoreTargetInvalid", target=target, reason=exc.strerror or str(exc)
                ) from None
    return False


def _targets(job: Job, names: list[str], replace: dict[str, str] | None) -> dict[str, str]:
    """Disk name -> where it is written."""
    if replace is not None:
        absent = [n for n in names if n not in replace]
        if absent:
            raise KluisError(
                "RestoreTargetInvalid",
                target=absent[0],
                reason="the machine has no disk of that name to replace; restore it to a path instead",
            )
        return {n: replace[n] for n in names}
    target = str(job.params.get("target_path") or "")
    if not target:
        raise KluisError(
            "RestoreTargetInvalid", target="(none)", reason="give a target path or replace the disks"
        )
    if target.startswith("/dev/") or _is_device(target):
        if len(names) != 1:
            raise KluisError(
                "RestoreTargetInvalid",
                target=target,
                reason="a block device takes one disk; name it in paths",
            )
        return {names[0]: target}
    Path(target).mkdir(parents=True, exist_ok=True)
    return {n: os.path.join(target, n) for n in names}


def run_disk_restore(job: Job) -> Outcome:
    """A restore job of a disks point; raises KluisError for the job's failure."""
    from kluis.agent.runner import RESTORE_PHASE, Outcome, check_hostname

    env, cfg = job.env, job.env.cfg
    point_id = str(job.params.get("point_id", ""))
    source = str((job.desc.get("repository") or {}).get("machine_id") or job.params.get("source_machine_id"))
    check_hostname(env)
    checks = scratch.check_before_job(cfg.scratch, item_id=None)
    layout = checks.layout
    item_id = str(job.item.get("id", ""))
    replace: dict[str, str] | None = None
    safety: str | None = None
    ext: Any = None
    if not job.params.get("target_path") and job.params.get("conflict") == "overwrite":
        ext = load_extension(job)
        machine = machine_for(ext, job.item, cfg.path, cfg.hostname)
        if machine.is_running():
            raise KluisError("UserErrorVmNotShutDown", vm=machine.name, operation="replacing its disks")
        # Keep what is about to be overwritten: a snapshot of the current disks first.
        points = ext.RestorePointCollection(item_id, instant_root(cfg.scratch), machine=machine.name)
        taken = ext.take_snapshot(machine, item=item_id, collection=points)
        safety = taken.snapshot.id
        if not taken.kept:
            taken.release()
        replace = {d.name: d.path for d in machine.list_disks()}
    inner = AgentVaultStore(cfg, repo_machine_id=source, buckets=env.buckets)
    store = ResilientStore(
        inner, should_stop=job.should_stop, outage_limit=env.outage_limit, on_wait=job.reporter.note_outage
    )
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    instant = False
    try:
        if source == cfg.machine_id:
            repo = open_own(cfg, store, layout.cache(source))
        else:
            repo = open_source(cfg, source, store, layout.cache(source))
        _header, manifest = repo.load_point(point_id)
        available = [d.name for d in disks_of(point_id, manifest)]
        wanted = [str(p).strip("/") for p in job.params.get("paths") or [] if str(p).strip("/")]
        unknown = [w for w in wanted if w not in available]
        if unknown:
            raise KluisError("RestoreTargetInvalid", target=unknown[0], reason="the point has no such disk")
        names = wanted or available
        targets = _targets(job, names, replace)
        local = (
            _instant_source(cfg.scratch, item_id, point_id, set(names)) if source == cfg.machine_id else None
        )
        job.reporter.set_phase(RESTORE_PHASE)
        for name in names:
            if local is not None:
                job.reporter.note(f"instant restore of {name} from the local snapshot")
                cloned = clone_or_copy(local[name], targets[name], name)
                size = os.path.getsize(local[name])
                results.append({"disk": name, "target": targets[name], "size": size, "reflink": cloned})
                instant = True
                continue
            restore = DiskRestore(repo, point_id, name, targets[name], should_stop=job.should_stop)
            restore.progress.phase = RESTORE_PHASE
            job.reporter.update(restore.progress)
            results.append(restore.run().as_dict())
            job.reporter.update(restore.progress)
    finally:
        store.close()
    stats: dict[str, Any] = {
        "point_id": point_id,
        "disks": results,
        "instant": instant,
        "source": "local snapshot" if instant else "vault",
        "seconds": round(time.monotonic() - started, 3),
        "replaced": replace is not None,
    }
    if safety is not None:
        stats["snapshot_before_replace"] = safety
    if instant:
        stats["message"] = (
            "instant restore: copied from the snapshot still kept on this host, nothing downloaded"
        )
    return Outcome("Completed", None, [], stats)


def _instant_source(root: Path, item_id: str, point_id: str, names: set[str]) -> dict[str, str] | None:
    """The kept local snapshot of ``point_id`` (disk name -> readable path), if it still exists."""
    from kluis.agent.extensions.snapshot import RestorePointCollection

    if not item_id:
        return None
    try:
        points = RestorePointCollection(item_id, instant_root(root)).points()
    except (OSError, ValueError, KluisError):
        return None
    for p in points:
        if p.recovery_point != point_id:
            continue
        found = {d.name: d.read_path for d in p.snapshot.disks}
        if names <= set(found) and all(os.path.exists(found[n]) for n in names):
            return {n: found[n] for n in names}
    return None
