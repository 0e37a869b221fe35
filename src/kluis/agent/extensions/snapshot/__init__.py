"""The snapshot extension: quiesce, point-in-time snapshot, thaw, instant recovery points.

This is a self-contained library the agent calls for machine and VM disk backups.
Its whole integration surface:

**Per backup** (the agent's disk-backup runner)::

    from kluis.agent.extensions.snapshot import (
        ConfigMachine, HostMachine, DiskRef, QuiesceConfig, RestorePointCollection, take_snapshot)

    machine = ConfigMachine("/etc/kluis/vms/web-01.toml")        # or HostMachine(name, [DiskRef(...)])
    config = QuiesceConfig.load("/etc/kluis/quiesce.toml")      # or QuiesceConfig() = freeze only
    points = RestorePointCollection(item_id, state_dir / "instant-points", machine=machine.name)
    result = take_snapshot(machine, item=item_id, quiesce=config, collection=points,
                           retention_days=policy_instant_days)
    for disk in result.snapshot.disks:                          # read the stable copies at leisure
        DiskBackup(repo, disk.read_path, name=disk.name,
                   changed_extents=result.changed_extents(disk.name), ...).run()
    point.header["consistency"] = result.consistency            # application | file-system | crash
    result.release()                                            # deletes it unless kept as instant point
    points.set_recovery_point(result.snapshot.id, recovery_point_id)

Every failure is a ``KluisError`` with a catalog code; ``result.warnings`` holds the
ones that did not stop the backup (a script failure under ``continue_on_failure``,
FreezeWindowExceeded). ``result.summary()`` is the job record's JSON.

**Points** (``kluis points lock|unlock|prune ITEM``): ``lock_collection(item, who, why,
root)``, ``unlock_collection(item, root)``, and ``RestorePointCollection.prune(time_limit=)``,
which deletes expired points until its time budget is spent.

**Extensions** (install on the first disk backup, heartbeats, ``kluis extension
list|uninstall``): ``ExtensionManager(ext_dir, machine=..., enabled=cfg_extensions_enable,
config_path=...)`` with ``ensure(name, version, sha256, fetch)``, ``states()``,
``heartbeat_entries()``, ``uninstall(name)``, ``load(name)``; the vault serves
``build_snapshot_extension_package(out_dir) -> (path, sha256, version)``.

Installed copies are imported under ``kluis_ext_snapshot``, so modules here import
each other relatively and use only ``kluis.catalog`` from the host. The freeze
watchdog (``watchdog.py``) uses the standard library only. See ``docs/snapshots.md``.
"""

from .extension import (
    EXTENSION_NAME,
    ExtensionManager,
    HandlerState,
    build_snapshot_extension_package,
    extension_version,
    http_fetcher,
)
from .freeze import FreezeGuard, Watchdog
from .instant import (
    MAX_POINTS,
    CollectionLock,
    InstantPoint,
    RestorePointCollection,
    lock_collection,
    unlock_collection,
)
from .limits import MAX_DISK_BYTES, MAX_ENCRYPTED_DISK_BYTES, check_disk_size
from .luks import check_encrypted_disk, read_luks_header
from .providers import DiskRef, DiskSnapshot, Provider, Snapshot, choose_provider, provider_named
from .quiesce import Consistency, QuiesceConfig, ScriptSpec, quiesced
from .session import SnapshotResult, take_snapshot
from .vmconfig import ConfigMachine, HostMachine, Machine, Quiesce

# Bumped when the surface above changes incompatibly; the agent checks it after loading.
EXTENSION_API = 1

__all__ = [
    "EXTENSION_API",
    "EXTENSION_NAME",
    "MAX_DISK_BYTES",
    "MAX_ENCRYPTED_DISK_BYTES",
    "MAX_POINTS",
    "CollectionLock",
    "ConfigMachine",
    "Consistency",
    "DiskRef",
    "DiskSnapshot",
    "ExtensionManager",
    "FreezeGuard",
    "HandlerState",
    "HostMachine",
    "InstantPoint",
    "Machine",
    "Provider",
    "Quiesce",
    "QuiesceConfig",
    "RestorePointCollection",
    "ScriptSpec",
    "Snapshot",
    "SnapshotResult",
    "Watchdog",
    "build_snapshot_extension_package",
    "check_disk_size",
    "check_encrypted_disk",
    "choose_provider",
    "extension_version",
    "http_fetcher",
    "lock_collection",
    "provider_named",
    "quiesced",
    "read_luks_header",
    "take_snapshot",
    "unlock_collection",
]
