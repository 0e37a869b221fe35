"""One snapshot of a machine, from checks to a kept instant recovery point.

Order: the running kernel (OperatingSystemUnsupported) -> the machine's state (a
paused or stopping VM is VmStateTransitional) -> disks and their limits (size, LUKS)
-> room in the restore point collection -> provider choice -> quiesce (pre-script,
freeze + watchdog) -> snapshot -> thaw and post-script -> keep as an instant recovery
point. Any failure after the snapshot was taken deletes it again, so nothing
half-made stays behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from kluis.catalog import KluisError

from .instant import RestorePointCollection, check_retention
from .limits import check_disk_size
from .luks import check_encrypted_disk
from .providers.base import Provider, Snapshot, new_snapshot_id
from .providers.qcow2 import DiskSwitcher
from .providers.registry import choose_provider
from .quiesce import Consistency, QuiesceConfig
from .support import check_operating_system
from .vmconfig import Machine, check_backup_state


@dataclass
class SnapshotResult:
    """A taken snapshot and what is known about it."""

    snapshot: Snapshot
    provider: Provider
    consistency: Consistency
    warnings: list[KluisError] = field(default_factory=list)
    freeze_seconds: float = 0.0
    kept: bool = False
    cleaned_up: list[str] = field(default_factory=list)
    previous: Snapshot | None = None

    def changed_extents(self, disk: str) -> list[tuple[int, int]] | None:
        """Changed byte ranges of ``disk`` since the previous kept snapshot (None: read it all)."""
        if self.previous is None:
            return None
        return self.snapshot.changed_extents(self.previous, disk)

    def release(self) -> None:
        """After the transfer: delete the snapshot unless it is kept as an instant recovery point."""
        if not self.kept:
            self.provider.delete(self.snapshot)

    def summary(self) -> dict[str, Any]:
        """JSON shape for the job record."""
        return {
            "snapshot": self.snapshot.id,
            "provider": self.snapshot.provider,
            "consistency": str(self.consistency),
            "freeze_seconds": round(self.freeze_seconds, 3),
            "kept": self.kept,
            "warnings": [w.to_dict() for w in self.warnings],
        }


def take_snapshot(
    machine: Machine,
    *,
    item: str,
    quiesce: QuiesceConfig | None = None,
    collection: RestorePointCollection | None = None,
    retention_days: int = 2,
    provider: Provider | None = None,
    prefer: str | None = None,
    key_files: dict[str, str] | None = None,
) -> SnapshotResult:
    """Snapshot ``machine``'s disks for ``item``; see the module docstring for the order.

    ``key_files`` maps a disk name to the key file of its LUKS volume, if any. Without a
    ``collection`` the snapshot is not kept (``release()`` deletes it after the transfer).
    """
    config = quiesce or QuiesceConfig()
    check_operating_system()
    # Before any reservation or provider work: a paused guest cannot be quiesced, and a
    # stopping one is still ending its last writes, so neither gives a usable snapshot.
    check_backup_state(machine)
    if collection is not None:
        check_retention(retention_days)
    disks = machine.list_disks()
    for d in disks:
        check_disk_size(d.path)
        check_encrypted_disk(d.path, machine=machine.name, key_file=(key_files or {}).get(d.name))
    cleaned: list[str] = []
    if collection is not None:
        cleaned = collection.reserve()
    switcher = machine if isinstance(machine, DiskSwitcher) else None
    chosen = provider or choose_provider(disks, switcher=switcher, prefer=prefer)
    snapshot_id = new_snapshot_id()
    snapshot: Snapshot | None = None
    q = machine.quiesce(config, item)
    try:
        snapshot = chosen.create(disks, snapshot_id)
    except BaseException as exc:
        q.thaw(type(exc), exc, exc.__traceback__)
        raise
    try:
        q.thaw()
        outcome = q.outcome
        result = SnapshotResult(
            snapshot,
            chosen,
            outcome.consistency,
            list(outcome.warnings),
            outcome.freeze_seconds,
            cleaned_up=cleaned,
        )
        snapshot.data.setdefault("consistency", str(outcome.consistency))
        if collection is not None and chosen.keeps_points:
            latest = collection.latest()
            result.previous = latest.snapshot if latest is not None else None
            collection.add(snapshot, retention_days, str(outcome.consistency))
            result.kept = True
        return result
    except BaseException:
        try:
            chosen.delete(snapshot)
        except KluisError:
            pass
        raise


def snapshot_path_exists(result: SnapshotResult) -> bool:
    """True while every disk of the snapshot can still be read (for instant restore)."""
    return all(os.path.exists(d.read_path) for d in result.snapshot.disks)
