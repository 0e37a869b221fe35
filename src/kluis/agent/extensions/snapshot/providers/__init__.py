"""Snapshot providers, chosen automatically per item (see ``registry.choose_provider``).

======================  ======================================  ====================
provider                disks                                   changed extents
======================  ======================================  ====================
``lvm-thin``            LVM thin volumes                        ``thin_delta``
``lvm``                 LVM volumes (copy-on-write space)       no
``btrfs``               image files in one btrfs subvolume      FIEMAP comparison
``reflink``             image files on XFS (reflink) or btrfs   FIEMAP comparison
``qcow2-overlay``       qcow2 images of a VM that can switch    no (not kept)
======================  ======================================  ====================
"""

from .base import DiskRef, DiskSnapshot, Provider, Snapshot, disk_format, new_snapshot_id
from .btrfs import BtrfsSubvolumeProvider
from .lvm import NO_DEVICE_MAPPER, LvmClassicProvider, LvmThinProvider, device_mapper_missing
from .qcow2 import DiskSwitcher, Qcow2OverlayProvider
from .reflink import ReflinkProvider
from .registry import candidates, choose_provider, provider_named

__all__ = [
    "NO_DEVICE_MAPPER",
    "BtrfsSubvolumeProvider",
    "DiskRef",
    "DiskSnapshot",
    "DiskSwitcher",
    "LvmClassicProvider",
    "LvmThinProvider",
    "Provider",
    "Qcow2OverlayProvider",
    "ReflinkProvider",
    "Snapshot",
    "candidates",
    "choose_provider",
    "device_mapper_missing",
    "disk_format",
    "new_snapshot_id",
    "provider_named",
]
