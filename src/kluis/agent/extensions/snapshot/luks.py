"""LUKS-encrypted disks: found by their header, locked unless a dm-crypt mapping is open.

The source documents' BitLocker cases map here: a locked volume cannot be frozen or
read as a file system (EncryptedVolumeLocked), and backing up an encrypted disk needs
its key to be available to the agent, so that a restore can open it again
(UserErrorKeyvaultPermissionsNotConfigured).
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from kluis.catalog import KluisError

LUKS_MAGIC = b"LUKS\xba\xbe"
# Both LUKS1 and the LUKS2 binary header keep the version at byte 6 and the UUID at 168.
_VERSION_AT = 6
_UUID_AT = 168
_UUID_LEN = 40


@dataclass(frozen=True)
class LuksHeader:
    """What the header says: LUKS version and volume UUID."""

    version: int
    uuid: str


def read_luks_header(path: str | os.PathLike[str]) -> LuksHeader | None:
    """The LUKS header at the start of ``path``, or None when it is not a LUKS volume."""
    with open(path, "rb") as fh:
        head = fh.read(_UUID_AT + _UUID_LEN)
    if len(head) < _UUID_AT + _UUID_LEN or not head.startswith(LUKS_MAGIC):
        return None
    (version,) = struct.unpack_from(">H", head, _VERSION_AT)
    uuid = head[_UUID_AT : _UUID_AT + _UUID_LEN].split(b"\0", 1)[0].decode("ascii", errors="replace")
    return LuksHeader(version, uuid)


def open_mapping(header: LuksHeader) -> str | None:
    """The ``/dev/mapper`` device of an open dm-crypt mapping of this volume, if one is open.

    dm-crypt names its mappings' dm UUID ``CRYPT-LUKS<version>-<uuid without dashes>-<name>``.
    Without device-mapper in the kernel nothing can be open, so the volume is locked.
    """
    prefix = f"CRYPT-LUKS{header.version}-{header.uuid.replace('-', '')}"
    for dm in sorted(Path("/sys/block").glob("dm-*")):
        try:
            uuid = (dm / "dm" / "uuid").read_text().strip()
            name = (dm / "dm" / "name").read_text().strip()
        except OSError:
            continue
        if uuid.startswith(prefix):
            return f"/dev/mapper/{name}"
    return None


def key_readable(key_file: str | os.PathLike[str] | None) -> bool:
    """True when the key file exists, is a regular file and root can read it."""
    if key_file is None:
        return False
    try:
        st = os.stat(key_file)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and os.access(key_file, os.R_OK)


def check_encrypted_disk(
    disk: str, *, machine: str, key_file: str | os.PathLike[str] | None = None
) -> LuksHeader | None:
    """For a LUKS disk: its key must be available and the volume open. None for other disks."""
    header = read_luks_header(disk)
    if header is None:
        return None
    if not key_readable(key_file):
        raise KluisError(
            "UserErrorKeyvaultPermissionsNotConfigured",
            machine=machine,
            disk=disk,
            detail=f"key file {key_file} is not readable" if key_file else "no key file is configured",
        )
    if open_mapping(header) is None:
        raise KluisError("EncryptedVolumeLocked", device=disk)
    return header
