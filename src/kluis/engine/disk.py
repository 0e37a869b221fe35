"""Disk-image backup and restore: the public names.

Backup: :class:`DiskBackup` (``disk_backup``). Restore and random access:
:class:`DiskRestore`, :class:`DiskImageReader` (``disk_restore``). The block map
format: ``blockmap``. Structural verify of disk points: ``disk_verify``.
"""

from __future__ import annotations

from kluis.engine.blockmap import DEFAULT_BLOCK_SIZE, DEFAULT_SEGMENT_ENTRIES, DiskMap, disks_of, find_disk
from kluis.engine.disk_backup import DiskBackup, DiskBackupResult, DiskSource, DiskStats
from kluis.engine.disk_restore import DiskImageReader, DiskRestore, DiskRestoreResult

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_SEGMENT_ENTRIES",
    "DiskBackup",
    "DiskBackupResult",
    "DiskImageReader",
    "DiskMap",
    "DiskRestore",
    "DiskRestoreResult",
    "DiskSource",
    "DiskStats",
    "disks_of",
    "find_disk",
]
