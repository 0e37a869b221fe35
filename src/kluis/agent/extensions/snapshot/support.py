"""Which running systems the snapshot extension supports: a kernel new enough for the disk path.

The oldest kernel is set by the newest kernel interface the disk path relies on:

- ``FICLONE`` (reflink copies of image files, ``providers/reflink.py``) became a
  file-system-independent ioctl in Linux 4.5; before it only btrfs answered the same
  number, under its own name, and XFS could not reflink at all;
- ``FS_IOC_FIEMAP`` (changed extents, 2.6.28), ``FIFREEZE``/``FITHAW`` (2.6.29),
  ``LOOP_GET_STATUS64``, btrfs subvolume snapshots and device-mapper snapshots are
  all older.

So the minimum is 4.5. The distribution (``/etc/os-release``) only names the system
in the message: the kernel decides what works, not the distribution's label.

The standard library only (besides ``kluis.catalog``): the installed copy of the
extension imports this as part of its own package.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kluis.catalog import KluisError

MINIMUM_KERNEL = (4, 5)
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
_VERSION = re.compile(r"^(\d+)\.(\d+)")


def kernel_release() -> str:
    """The running kernel's release as the kernel reports it (``uname -r``)."""
    return os.uname().release


def kernel_version(release: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a release such as ``6.1.0-18-amd64``; None when unreadable."""
    m = _VERSION.match(release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def distribution_name(paths: tuple[str, ...] = OS_RELEASE) -> str:
    """The distribution's display name from os-release (``PRETTY_NAME``, else ``NAME``)."""
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        fields: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip().strip("\"'")
        name = fields.get("PRETTY_NAME") or fields.get("NAME")
        if name:
            return name
    return os.uname().sysname


def unsupported_reason(release: str) -> str | None:
    """Why a kernel ``release`` cannot run the disk path, or None when it can."""
    version = kernel_version(release)
    need = ".".join(map(str, MINIMUM_KERNEL))
    if version is None:
        return f"its version cannot be read, and disk backups need Linux {need} or newer"
    if version < MINIMUM_KERNEL:
        return f"disk backups need Linux {need} or newer (FICLONE reflink copies)"
    return None


def check_operating_system(release: str | None = None) -> None:
    """Raise OperatingSystemUnsupported when the running kernel is older than the disk path needs."""
    release = kernel_release() if release is None else release
    reason = unsupported_reason(release)
    if reason is not None:
        raise KluisError("OperatingSystemUnsupported", os=distribution_name(), kernel=release, reason=reason)
