"""The provider model: disks in, a point-in-time snapshot out, recorded so it can be found,
compared and deleted later (instant recovery points outlive the agent process)."""

from __future__ import annotations

import abc
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from kluis.catalog import KluisError

EXTENSION_NAME = "snapshot"


@dataclass(frozen=True)
class DiskRef:
    """A disk to snapshot: its name in the item, its path, and ``raw``, ``qcow2`` or ``block``."""

    name: str
    path: str
    format: str = "raw"


def disk_format(path: str) -> str:
    """``block`` for a block device, ``qcow2`` for a qcow2 image (by magic), else ``raw``."""
    import stat

    st = os.stat(path)
    if stat.S_ISBLK(st.st_mode):
        return "block"
    with open(path, "rb") as fh:
        return "qcow2" if fh.read(4) == b"QFI\xfb" else "raw"


@dataclass
class DiskSnapshot:
    """One disk inside a snapshot: where the backup reads its stable content."""

    name: str
    source: str
    read_path: str
    size: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Snapshot:
    """A point-in-time snapshot of an item's disks, as JSON-able data."""

    id: str
    provider: str
    created: float
    disks: list[DiskSnapshot]
    data: dict[str, Any] = field(default_factory=dict)

    def disk(self, name: str) -> DiskSnapshot:
        """The disk called ``name``."""
        for d in self.disks:
            if d.name == name:
                return d
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape (kept in the instant recovery point collection)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        """Rebuild from ``to_dict`` output."""
        return cls(
            id=data["id"],
            provider=data["provider"],
            created=float(data["created"]),
            disks=[DiskSnapshot(**d) for d in data["disks"]],
            data=dict(data.get("data") or {}),
        )

    def changed_extents(self, previous: Snapshot, disk: str) -> list[tuple[int, int]] | None:
        """Byte ranges of ``disk`` changed since ``previous``, or None when unknown (read all)."""
        from .registry import provider_named

        if previous.provider != self.provider:
            return None
        try:
            return provider_named(self.provider).changed_extents(previous, self, disk)
        except (KeyError, OSError):
            return None

    def delete(self) -> None:
        """Remove the snapshot (its files, subvolume, volume or overlay)."""
        from .registry import provider_named

        provider_named(self.provider).delete(self)


def new_snapshot_id() -> str:
    """A sortable, unique snapshot id: ``kluis-20240101T020000Z-1a2b``."""
    return time.strftime("kluis-%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


def run_tool(provider: str, device: str, argv: list[str], timeout: float = 300.0) -> str:
    """Run a snapshot tool; its stdout, or a coded error naming the tool and its message."""
    if shutil.which(argv[0]) is None:
        raise KluisError("ExtensionDependencyMissing", extension=EXTENSION_NAME, dependency=argv[0])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise KluisError(
            "SnapshotProviderFailed", provider=provider, device=device, reason=f"{argv[0]} timed out"
        ) from exc
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        reason = f"{' '.join(argv[:3])} exited with {proc.returncode}" + (f": {msg[-1]}" if msg else "")
        raise KluisError("SnapshotProviderFailed", provider=provider, device=device, reason=reason)
    return proc.stdout


class Provider(abc.ABC):
    """One way to take snapshots. Subclasses register themselves by ``name``."""

    name: ClassVar[str]
    # Whether its snapshots may be kept as instant recovery points.
    keeps_points: ClassVar[bool] = True

    @abc.abstractmethod
    def unusable_reason(self, disks: list[DiskRef]) -> str | None:
        """Why this provider cannot snapshot ``disks`` (None when it can)."""

    @abc.abstractmethod
    def create(self, disks: list[DiskRef], snapshot_id: str) -> Snapshot:
        """Take the snapshot of all ``disks`` (call inside the quiesce)."""

    @abc.abstractmethod
    def delete(self, snapshot: Snapshot) -> None:
        """Remove a snapshot made by this provider; a missing one is not an error."""

    def changed_extents(
        self, previous: Snapshot, current: Snapshot, disk: str
    ) -> list[tuple[int, int]] | None:
        """Changed byte ranges of ``disk`` between two snapshots; None when not known."""
        return None
