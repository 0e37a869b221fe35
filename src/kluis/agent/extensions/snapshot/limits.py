"""Disk size limits: 32 TiB for any disk, 4 TiB for a LUKS-encrypted one."""

from __future__ import annotations

import fcntl
import os
import stat
import struct

from kluis.catalog import KluisError

from .luks import read_luks_header

TIB = 1024**4
MAX_DISK_BYTES = 32 * TIB
MAX_ENCRYPTED_DISK_BYTES = 4 * TIB
BLKGETSIZE64 = 0x80081272


def disk_size(path: str | os.PathLike[str]) -> int:
    """Size in bytes of a block device or an image file (its apparent size)."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return st.st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, BLKGETSIZE64, buf, True)
        return int(struct.unpack("=Q", buf)[0])
    finally:
        os.close(fd)


def human(size: int) -> str:
    """``35184372088833`` -> ``32.0 TiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"


def check_disk_size(path: str, *, encrypted: bool | None = None, size: int | None = None) -> int:
    """The disk's size, or UserErrorUnsupportedDiskSize when it exceeds its limit.

    ``encrypted`` None means: look for a LUKS header.
    """
    size = disk_size(path) if size is None else size
    if encrypted is None:
        encrypted = read_luks_header(path) is not None
    limit = MAX_ENCRYPTED_DISK_BYTES if encrypted else MAX_DISK_BYTES
    if size > limit:
        kind = "LUKS-encrypted disks" if encrypted else "disks"
        raise KluisError(
            "UserErrorUnsupportedDiskSize",
            disk=path,
            size=human(size),
            limit=f"{human(limit)} for {kind}",
        )
    return size
