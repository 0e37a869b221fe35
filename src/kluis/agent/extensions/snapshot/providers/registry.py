"""Provider lookup by name and the automatic choice for a set of disks."""

from __future__ import annotations

from kluis.catalog import KluisError

from .base import DiskRef, Provider
from .btrfs import BtrfsSubvolumeProvider
from .lvm import LvmClassicProvider, LvmThinProvider
from .qcow2 import DiskSwitcher, Qcow2OverlayProvider
from .reflink import ReflinkProvider


def provider_named(name: str, switcher: DiskSwitcher | None = None) -> Provider:
    """A provider by its recorded name (to compare or delete a kept snapshot)."""
    providers: dict[str, Provider] = {
        LvmThinProvider.name: LvmThinProvider(),
        LvmClassicProvider.name: LvmClassicProvider(),
        BtrfsSubvolumeProvider.name: BtrfsSubvolumeProvider(),
        ReflinkProvider.name: ReflinkProvider(),
        Qcow2OverlayProvider.name: Qcow2OverlayProvider(switcher),
    }
    return providers[name]


def candidates(switcher: DiskSwitcher | None = None) -> list[Provider]:
    """Every provider, in order of preference.

    LVM thin before classic (no copy-on-write space to size, changed extents known);
    btrfs subvolume before reflink (one atomic snapshot for all disks of a VM); reflink
    before a qcow2 overlay (the VM is not moved onto a new image).
    """
    return [
        LvmThinProvider(),
        LvmClassicProvider(),
        BtrfsSubvolumeProvider(),
        ReflinkProvider(),
        Qcow2OverlayProvider(switcher),
    ]


def choose_provider(
    disks: list[DiskRef], *, switcher: DiskSwitcher | None = None, prefer: str | None = None
) -> Provider:
    """The best provider for ``disks``, or SnapshotProviderUnavailable saying what each lacks."""
    found = candidates(switcher)
    if prefer:
        found = [p for p in found if p.name == prefer]
        if not found:
            raise KluisError(
                "SnapshotProviderUnavailable",
                disk=", ".join(d.path for d in disks),
                missing=f"there is no snapshot provider called {prefer!r}",
            )
    reasons: list[str] = []
    for provider in found:
        reason = provider.unusable_reason(disks)
        if reason is None:
            return provider
        reasons.append(f"{provider.name}: {reason}")
    raise KluisError(
        "SnapshotProviderUnavailable", disk=", ".join(d.path for d in disks), missing="; ".join(reasons)
    )
