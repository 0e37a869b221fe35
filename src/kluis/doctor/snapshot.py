"""Snapshot prerequisites: the kernel, freezing file systems, LVM space, btrfs tools.

What the snapshot extension needs before it can take a consistent snapshot, asked
without touching any file system (a test freeze could stall the machine's writers,
and thawing a mount the agent froze on purpose would break its snapshot):

- ``snapshot-os``: the running kernel is one the disk path supports (Linux 4.5 or
  newer, see ``kluis.agent.extensions.snapshot.support``; OperatingSystemUnsupported);
- ``snapshot-freeze``: the agent may freeze (CAP_SYS_ADMIN, what the FIFREEZE ioctl
  needs; UserErrorFsFreezeFailed otherwise), and ``fsfreeze`` is installed to thaw by
  hand (ExtensionDependencyMissing, a warning);
- ``snapshot-lvm``: device-mapper is in the kernel (skipped, with that reason, when
  it is not), and every volume group with volumes has the copy-on-write space a
  classic snapshot takes (SnapshotSpaceInsufficient);
- ``snapshot-btrfs``: a mounted btrfs file system needs the ``btrfs`` tool
  (ExtensionDependencyMissing).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from kluis.agent.extensions.snapshot import EXTENSION_NAME
from kluis.agent.extensions.snapshot.mounts import mounts
from kluis.agent.extensions.snapshot.providers import device_mapper_missing
from kluis.agent.extensions.snapshot.support import check_operating_system, distribution_name, kernel_release
from kluis.agent.scratch import human
from kluis.catalog import KluisError
from kluis.doctor.context import MachineContext
from kluis.doctor.framework import Check, Result, catalog_checks, failed, passed, skipped, warned

CAP_SYS_ADMIN = 21
COW_MINIMUM = 1 << 30  # a classic LVM snapshot takes at least this much (LvmClassicProvider)
INSTALL = "install it with the distribution's package manager (`apt install {pkg}` or `dnf install {pkg}`)"


def has_capability(bit: int) -> bool:
    """Whether this process has a capability in its effective set (from /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False


def _missing(dependency: str) -> KluisError:
    return KluisError("ExtensionDependencyMissing", extension=EXTENSION_NAME, dependency=dependency)


def check_os(ctx: MachineContext) -> Result:
    """The running kernel is new enough for disk backups (the check the extension makes first)."""
    try:
        check_operating_system()
    except KluisError as error:
        fix = "update the kernel (or the distribution) and reboot; files-and-folders backups still work"
        return failed(error, fix)
    release = kernel_release()
    return passed(f"{distribution_name()} with kernel {release} supports disk backups", kernel=release)


def check_freeze(ctx: MachineContext) -> Result:
    """The FIFREEZE ioctl is allowed, and fsfreeze is there to thaw by hand."""
    if not has_capability(CAP_SYS_ADMIN):
        error = KluisError(
            "UserErrorFsFreezeFailed",
            mountpoint="any mount point",
            reason="freezing needs root (CAP_SYS_ADMIN), which this process does not have",
        )
        return failed(error, "run the agent (and `kluis doctor`) as root: `User=root` in kluis-agent.service")
    if shutil.which("fsfreeze") is None:
        return warned(_missing("fsfreeze (util-linux)"), INSTALL.format(pkg="util-linux"))
    return passed("the agent may freeze file systems (CAP_SYS_ADMIN); fsfreeze is installed to thaw by hand")


def _volume_groups() -> list[tuple[str, int, int]]:
    proc = subprocess.run(
        [
            "vgs",
            "--noheadings",
            "--nosuffix",
            "--units",
            "b",
            "--separator",
            "|",
            "-o",
            "vg_name,vg_free,lv_count",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    groups: list[tuple[str, int, int]] = []
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            groups.append((parts[0], int(parts[1]), int(parts[2])))
    return groups


def check_lvm(ctx: MachineContext) -> Result:
    """Device-mapper present; volume groups with volumes have copy-on-write space."""
    reason = device_mapper_missing()
    if reason is not None:
        return skipped(f"LVM snapshots cannot work here: {reason}")
    if shutil.which("vgs") is None:
        return passed("no LVM tools installed, so no LVM volume is snapshotted on this machine")
    for vg, free, volumes in _volume_groups():
        if volumes and free < COW_MINIMUM:
            error = KluisError(
                "SnapshotSpaceInsufficient",
                device=f"the volumes of {vg}",
                needed=human(COW_MINIMUM),
                pool=f"volume group {vg}",
                free=human(free),
            )
            fix = f"add space to the volume group: `vgextend {vg} /dev/NEWDISK` (or use thin volumes)"
            return warned(error, fix)
    return passed("device-mapper is present; every volume group has copy-on-write space")


def check_btrfs(ctx: MachineContext) -> Result:
    """A mounted btrfs file system needs the btrfs tool for subvolume snapshots."""
    found = sorted({m.mountpoint for m in mounts() if m.fstype == "btrfs"})
    if not found:
        return passed("no btrfs file system is mounted, so the btrfs tool is not needed")
    if shutil.which("btrfs") is None:
        return failed(
            _missing("btrfs (btrfs-progs)"), INSTALL.format(pkg="btrfs-progs"), details={"mounts": found}
        )
    return passed(f"btrfs-progs installed for {len(found)} btrfs mount(s)", mounts=found)


CHECKS: list[Check[MachineContext]] = [
    Check(
        "snapshot-os", "Snapshot prerequisites: operating system", check_os, ("OperatingSystemUnsupported",)
    ),
    Check(
        "snapshot-freeze",
        "Snapshot prerequisites: freeze",
        check_freeze,
        ("UserErrorFsFreezeFailed", "ExtensionDependencyMissing"),
    ),
    Check("snapshot-lvm", "Snapshot prerequisites: LVM", check_lvm, ("SnapshotSpaceInsufficient",)),
    Check("snapshot-btrfs", "Snapshot prerequisites: btrfs", check_btrfs, ("ExtensionDependencyMissing",)),
]
CATALOG_CHECKS = catalog_checks(CHECKS)
