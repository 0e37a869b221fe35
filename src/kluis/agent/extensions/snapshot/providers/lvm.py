"""LVM snapshots: classic (copy-on-write space in the volume group) and thin.

Both need device-mapper in the kernel. A classic snapshot gets copy-on-write space
of ``cow_percent`` of the volume (at least ``cow_minimum`` bytes) from the volume
group's free space; a thin snapshot takes its space from the thin pool as needed.
For thin volumes ``thin_delta`` (thin-provisioning-tools) lists the blocks that
differ between two thin snapshots, read from a metadata snapshot of the pool.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from kluis.catalog import KluisError

from .base import DiskRef, DiskSnapshot, Provider, Snapshot, run_tool

NO_DEVICE_MAPPER = "no device-mapper in this kernel"


def device_mapper_missing() -> str | None:
    """Why LVM cannot work here (``no device-mapper in this kernel``), or None when it can."""
    if os.path.exists("/sys/class/misc/device-mapper"):
        return None
    if shutil.which("dmsetup"):
        proc = subprocess.run(["dmsetup", "version"], capture_output=True, text=True, check=False)
        if proc.returncode == 0 and "Driver version" in proc.stdout:
            return None
    return NO_DEVICE_MAPPER


@dataclass(frozen=True)
class LogicalVolume:
    """What ``lvs`` says about a volume."""

    vg: str
    lv: str
    attr: str
    pool: str
    size: int
    thin_id: int | None

    @property
    def thin(self) -> bool:
        """A thin volume (attribute ``V``)."""
        return self.attr.startswith("V")


def logical_volume(path: str) -> LogicalVolume | None:
    """The LVM volume at ``path``, or None when it is not one."""
    if shutil.which("lvs") is None:
        return None
    proc = subprocess.run(
        [
            "lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", "|",
            "-o", "vg_name,lv_name,lv_attr,pool_lv,lv_size,thin_id", path,
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    vg, lv, attr, pool, size, thin_id = (f.strip() for f in proc.stdout.strip().split("|"))
    return LogicalVolume(vg, lv, attr, pool, int(size), int(thin_id) if thin_id else None)


def _dm_name(vg: str, lv: str) -> str:
    # device-mapper names double each dash inside the VG and LV names.
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def parse_thin_delta(xml_text: str) -> list[tuple[int, int]]:
    """Changed byte ranges from ``thin_delta -m`` output (blocks of ``data_block_size`` sectors)."""
    root = ET.fromstring(xml_text)
    block = int(root.get("data_block_size", "0")) * 512
    if block <= 0:
        raise ValueError("thin_delta output without data_block_size")
    ranges: list[tuple[int, int]] = []
    for tag in ("different", "right_only", "left_only"):
        for el in root.iter(tag):
            ranges.append((int(el.get("begin", "0")) * block, int(el.get("length", "0")) * block))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for off, length in ranges:
        if merged and merged[-1][0] + merged[-1][1] >= off:
            end = max(merged[-1][0] + merged[-1][1], off + length)
            merged[-1] = (merged[-1][0], end - merged[-1][0])
        else:
            merged.append((off, length))
    return merged


class _LvmProvider(Provider):
    thin: bool

    def unusable_reason(self, disks: list[DiskRef]) -> str | None:
        missing = device_mapper_missing()
        if missing:
            return missing
        if shutil.which("lvcreate") is None:
            return "lvcreate (lvm2) is not installed"
        for disk in disks:
            if disk.format != "block":
                return f"{disk.path} is an image file, not an LVM volume"
            lv = logical_volume(disk.path)
            if lv is None:
                return f"{disk.path} is not an LVM logical volume"
            if lv.thin != self.thin:
                return f"{disk.path} is {'a thin' if lv.thin else 'not a thin'} volume"
        return None

    @abc.abstractmethod
    def _snapshot_one(self, disk: DiskRef, lv: LogicalVolume, name: str) -> None:
        """Create the snapshot volume ``name`` of ``lv``."""

    def create(self, disks: list[DiskRef], snapshot_id: str) -> Snapshot:
        made: list[DiskSnapshot] = []
        try:
            for disk in disks:
                lv = logical_volume(disk.path)
                if lv is None:
                    raise KluisError(
                        "SnapshotProviderUnavailable",
                        disk=disk.path,
                        missing="it is not an LVM logical volume",
                    )
                name = f"{lv.lv}.{snapshot_id}"
                self._snapshot_one(disk, lv, name)
                snap = logical_volume(f"{lv.vg}/{name}")
                made.append(
                    DiskSnapshot(
                        disk.name,
                        disk.path,
                        f"/dev/{lv.vg}/{name}",
                        lv.size,
                        {"vg": lv.vg, "lv": name, "pool": lv.pool, "thin_id": snap.thin_id if snap else None},
                    )
                )
        except BaseException:
            for d in made:
                with contextlib.suppress(KluisError):
                    run_tool(self.name, d.read_path, ["lvremove", "-fy", f"{d.data['vg']}/{d.data['lv']}"])
            raise
        return Snapshot(snapshot_id, self.name, time.time(), made)

    def delete(self, snapshot: Snapshot) -> None:
        for d in snapshot.disks:
            if os.path.exists(d.read_path):
                run_tool(self.name, d.read_path, ["lvremove", "-fy", f"{d.data['vg']}/{d.data['lv']}"])


class LvmClassicProvider(_LvmProvider):
    """Classic LVM snapshots with copy-on-write space from the volume group."""

    name = "lvm"
    thin = False

    def __init__(self, cow_percent: float = 10.0, cow_minimum: int = 1 << 30) -> None:
        self.cow_percent = cow_percent
        self.cow_minimum = cow_minimum

    def _snapshot_one(self, disk: DiskRef, lv: LogicalVolume, name: str) -> None:
        needed = max(self.cow_minimum, int(lv.size * self.cow_percent / 100))
        needed -= needed % 512
        free_out = run_tool(
            self.name,
            disk.path,
            ["vgs", "--noheadings", "--nosuffix", "--units", "b", "-o", "vg_free", lv.vg],
        )
        free = int(free_out.strip() or 0)
        if free < needed:
            raise KluisError(
                "SnapshotSpaceInsufficient",
                device=disk.path,
                needed=f"{needed} bytes",
                pool=f"volume group {lv.vg}",
                free=f"{free} bytes",
            )
        run_tool(self.name, disk.path, ["lvcreate", "-s", "-n", name, "-L", f"{needed}b", f"{lv.vg}/{lv.lv}"])


class LvmThinProvider(_LvmProvider):
    """Thin LVM snapshots; changed blocks from ``thin_delta``."""

    name = "lvm-thin"
    thin = True

    def _snapshot_one(self, disk: DiskRef, lv: LogicalVolume, name: str) -> None:
        run_tool(self.name, disk.path, ["lvcreate", "-s", "-n", name, f"{lv.vg}/{lv.lv}"])
        # Thin snapshots are created with the activation-skip flag; activate it to read it.
        run_tool(self.name, disk.path, ["lvchange", "-ay", "-K", f"{lv.vg}/{name}"])

    def changed_extents(
        self, previous: Snapshot, current: Snapshot, disk: str
    ) -> list[tuple[int, int]] | None:
        """Blocks that differ between the two thin snapshots, from a pool metadata snapshot."""
        prev, cur = previous.disk(disk), current.disk(disk)
        if prev.data.get("thin_id") is None or cur.data.get("thin_id") is None or not cur.data.get("pool"):
            return None
        if prev.data.get("pool") != cur.data["pool"] or shutil.which("thin_delta") is None:
            return None
        vg, pool = cur.data["vg"], cur.data["pool"]
        tpool = f"/dev/mapper/{_dm_name(vg, pool)}-tpool"
        tmeta = f"/dev/mapper/{_dm_name(vg, pool + '_tmeta')}"
        run_tool(self.name, tpool, ["dmsetup", "message", tpool, "0", "reserve_metadata_snap"])
        try:
            out = run_tool(
                self.name,
                tmeta,
                [
                    "thin_delta", "-m", "--snap1", str(prev.data["thin_id"]),
                    "--snap2", str(cur.data["thin_id"]), tmeta,
                ],
            )  # fmt: skip
        finally:
            with contextlib.suppress(KluisError):
                run_tool(self.name, tpool, ["dmsetup", "message", tpool, "0", "release_metadata_snap"])
        return parse_thin_delta(out)
