"""qcow2 external snapshots: the VM moves onto a new overlay, the old image stands still.

``qemu-img create -f qcow2 -b IMAGE -F qcow2 OVERLAY`` makes an empty overlay whose
backing file is the image; once the VM writes into the overlay (the machine's
``switch_disk``), the image no longer changes and the backup reads it at leisure.
Deleting the snapshot merges the overlay back (``qemu-img commit``), points the VM at
the image again and removes the overlay. A config-file VM does the switch by
recording the active image; a hypervisor connector (libvirt) would do it live with
its own snapshot and block-commit calls behind the same ``switch_disk``. Overlays are
not kept as instant recovery points: each one lengthens the VM's image chain.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from kluis.catalog import KluisError

from .base import DiskRef, DiskSnapshot, Provider, Snapshot, run_tool


@runtime_checkable
class DiskSwitcher(Protocol):
    """Something that can point a VM's disk at another image file."""

    def switch_disk(self, name: str, path: str) -> None:
        """From now on the VM's disk ``name`` is the image at ``path``."""


class Qcow2OverlayProvider(Provider):
    """External qcow2 overlays; needs a machine that can switch its disks."""

    name = "qcow2-overlay"
    keeps_points = False

    def __init__(self, switcher: DiskSwitcher | None = None) -> None:
        self.switcher = switcher

    def unusable_reason(self, disks: list[DiskRef]) -> str | None:
        """Needs qcow2 images, qemu-img, and a machine that can move onto the overlay."""
        for disk in disks:
            if disk.format != "qcow2":
                return f"{disk.path} is not a qcow2 image"
        if shutil.which("qemu-img") is None:
            return "qemu-img (qemu-utils) is not installed"
        if self.switcher is None:
            return "nothing can move the VM onto an overlay (no VM connector for this machine)"
        return None

    def create(self, disks: list[DiskRef], snapshot_id: str) -> Snapshot:
        """Create an overlay per disk and switch the VM onto it."""
        if self.switcher is None:
            raise KluisError(
                "SnapshotProviderUnavailable", disk=disks[0].path, missing="no VM connector to switch disks"
            )
        made: list[DiskSnapshot] = []
        try:
            for disk in disks:
                base = os.path.realpath(disk.path)
                overlay = str(Path(base).with_name(f"{Path(base).stem}.{snapshot_id}.qcow2"))
                run_tool(
                    self.name,
                    base,
                    ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay],
                )
                made.append(
                    DiskSnapshot(
                        disk.name, base, base, os.stat(base).st_size, {"overlay": overlay, "base": base}
                    )
                )
                self.switcher.switch_disk(disk.name, overlay)
        except BaseException:
            for d in made:
                self.switcher.switch_disk(d.name, d.data["base"])
                with contextlib.suppress(OSError):
                    os.unlink(d.data["overlay"])
            raise
        return Snapshot(snapshot_id, self.name, time.time(), made)

    def delete(self, snapshot: Snapshot) -> None:
        """Merge each overlay into its image, switch back, remove the overlay."""
        if self.switcher is None:
            raise KluisError(
                "SnapshotProviderFailed",
                provider=self.name,
                device=snapshot.disks[0].source,
                reason="merging an overlay back needs the VM's connector",
            )
        for d in snapshot.disks:
            overlay = d.data["overlay"]
            if os.path.exists(overlay):
                run_tool(self.name, overlay, ["qemu-img", "commit", "-q", overlay])
            self.switcher.switch_disk(d.name, d.data["base"])
            with contextlib.suppress(FileNotFoundError):
                os.unlink(overlay)
