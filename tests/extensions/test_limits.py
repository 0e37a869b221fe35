"""Disk size limits and LUKS volumes: real sparse files on XFS, a fake LUKS header."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from kluis.agent.extensions.snapshot import check_disk_size, check_encrypted_disk, read_luks_header
from kluis.agent.extensions.snapshot.limits import MAX_DISK_BYTES, MAX_ENCRYPTED_DISK_BYTES
from kluis.catalog import KluisError


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def _luks_header(version: int = 2, volume: str | None = None) -> bytes:
    head = bytearray(4096)
    head[0:6] = b"LUKS\xba\xbe"
    head[6:8] = version.to_bytes(2, "big")
    head[168 : 168 + 36] = (volume or str(uuid.uuid4())).encode()
    return bytes(head)


def test_disks_over_32_tib_are_refused(xfs_host: Path) -> None:
    at_limit = _sparse(xfs_host / "ok.img", MAX_DISK_BYTES)
    assert check_disk_size(str(at_limit)) == MAX_DISK_BYTES
    too_big = _sparse(xfs_host / "big.img", MAX_DISK_BYTES + 4096)
    assert os.stat(too_big).st_size > 32 * 1024**4
    with pytest.raises(KluisError) as exc:
        check_disk_size(str(too_big))
    assert exc.value.code == "UserErrorUnsupportedDiskSize"
    assert "32.0 TiB" in exc.value.message and "32.0 TiB for disks" in exc.value.message


def test_encrypted_disks_over_4_tib_are_refused(xfs_host: Path) -> None:
    small = _sparse(xfs_host / "luks-ok.img", MAX_ENCRYPTED_DISK_BYTES, _luks_header())
    assert check_disk_size(str(small)) == MAX_ENCRYPTED_DISK_BYTES
    big = _sparse(xfs_host / "luks-big.img", 5 * 1024**4, _luks_header())
    with pytest.raises(KluisError) as exc:
        check_disk_size(str(big))
    assert exc.value.code == "UserErrorUnsupportedDiskSize"
    assert "5.0 TiB" in exc.value.message and "4.0 TiB for LUKS-encrypted disks" in exc.value.message


def test_luks_header_key_access_and_locked_volume(tmp_path: Path) -> None:
    volume = "6f1c2a9e-1111-4a4a-9b9b-123456789abc"
    disk = _sparse(tmp_path / "luks.img", 16 * 1024 * 1024, _luks_header(2, volume))
    header = read_luks_header(disk)
    assert header is not None and header.version == 2 and header.uuid == volume
    plain = _sparse(tmp_path / "plain.img", 1024 * 1024, b"\0" * 4096)
    assert read_luks_header(plain) is None
    assert check_encrypted_disk(str(plain), machine="web-01") is None

    with pytest.raises(KluisError) as exc:
        check_encrypted_disk(str(disk), machine="web-01")
    assert exc.value.code == "UserErrorKeyvaultPermissionsNotConfigured"
    assert "no key file is configured" in exc.value.message
    with pytest.raises(KluisError) as exc:
        check_encrypted_disk(str(disk), machine="web-01", key_file=tmp_path / "absent.key")
    assert exc.value.code == "UserErrorKeyvaultPermissionsNotConfigured"

    key = tmp_path / "luks.key"
    key.write_bytes(os.urandom(64))
    key.chmod(0o400)
    # With the key in place, the volume is still locked: no dm-crypt mapping is open
    # (and this kernel has no device-mapper to open one).
    with pytest.raises(KluisError) as exc:
        check_encrypted_disk(str(disk), machine="web-01", key_file=key)
    assert exc.value.code == "EncryptedVolumeLocked"
    assert str(disk) in exc.value.message
