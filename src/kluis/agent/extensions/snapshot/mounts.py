"""Mounted file systems and the block devices under them, read from /proc and /sys."""

from __future__ import annotations

import fcntl
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mountpoint: str
    fstype: str
    source: str
    major: int
    minor: int
    options: str

    @property
    def read_only(self) -> bool:
        """True when mounted read-only (a read-only file system needs no freeze)."""
        return "ro" in self.options.split(",")


def mounts() -> list[Mount]:
    """Every mount visible to this process, in mount order."""
    found: list[Mount] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rest = right.split()
            if len(fields) < 6 or len(rest) < 2:
                continue
            major, _, minor = fields[2].partition(":")
            found.append(
                Mount(
                    mountpoint=_unescape(fields[4]),
                    fstype=rest[0],
                    source=_unescape(rest[1]),
                    major=int(major),
                    minor=int(minor),
                    options=fields[5],
                )
            )
    return found


def mount_of(path: str | os.PathLike[str]) -> Mount:
    """The mount that holds ``path`` (the longest mount point that is a prefix of it)."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in mounts():
        mp = m.mountpoint
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (
            best is None or len(mp) >= len(best.mountpoint)
        ):
            best = m
    if best is None:
        raise FileNotFoundError(f"no mount holds {path}")
    return best


LOOP_GET_STATUS64 = 0x4C05
# struct loop_info64 starts with lo_device and lo_inode (u64 each); 232 bytes in all.
_LOOP_INFO64_SIZE = 232


def _loop_backing(dev: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of a loop device's backing file, from LOOP_GET_STATUS64."""
    try:
        fd = os.open(dev, os.O_RDONLY)
    except OSError:
        return None
    try:
        buf = bytearray(_LOOP_INFO64_SIZE)
        fcntl.ioctl(fd, LOOP_GET_STATUS64, buf, True)
    except OSError:
        return None  # not bound to a file
    finally:
        os.close(fd)
    device, inode = struct.unpack_from("=QQ", buf, 0)
    return device, inode


def loop_devices_backed_by(path: str | os.PathLike[str]) -> list[str]:
    """Loop devices (``/dev/loopN``) whose backing file is ``path``.

    Compared by device and inode (the path in sysfs is cut at 64 bytes by older
    interfaces and goes stale when the file is renamed), else by path.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    found: list[str] = []
    for entry in sorted(Path("/sys/block").glob("loop*")):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue  # not attached
        dev = f"/dev/{entry.name}"
        ident = _loop_backing(dev)
        same_file = (
            ident is not None
            and ident[1] == st.st_ino
            and (os.major(ident[0]), os.minor(ident[0])) == (os.major(st.st_dev), os.minor(st.st_dev))
        )
        if same_file or backing == real:
            found.append(dev)
    return found


def device_numbers(device: str) -> tuple[set[tuple[int, int]], set[str]]:
    """``(major, minor)`` and ``/dev`` paths of a block device and of each of its partitions."""
    st = os.stat(device)
    numbers = {(os.major(st.st_rdev), os.minor(st.st_rdev))}
    paths = {os.path.realpath(device)}
    sys_dir = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    try:
        for child in sys_dir.iterdir():
            dev_file = child / "dev"
            if (child / "partition").exists() and dev_file.exists():
                major, _, minor = dev_file.read_text().strip().partition(":")
                numbers.add((int(major), int(minor)))
                paths.add(f"/dev/{child.name}")
    except OSError:
        pass
    return numbers, paths


def mounts_on_devices(devices: list[str]) -> list[Mount]:
    """Writable mounts of file systems that live on ``devices`` or their partitions.

    A file system mounted at several places (bind mounts) is listed once, at its first
    mount point: freezing works on the file system, not on the mount. btrfs shows an
    anonymous device number in mountinfo, so the mount's source path is matched too.
    """
    numbers: set[tuple[int, int]] = set()
    paths: set[str] = set()
    for dev in devices:
        nums, names = device_numbers(dev)
        numbers |= nums
        paths |= names
    seen: set[tuple[int, int]] = set()
    out: list[Mount] = []
    for m in mounts():
        key = (m.major, m.minor)
        if (key in numbers or m.source in paths) and key not in seen and not m.read_only:
            seen.add(key)
            out.append(m)
    return out
