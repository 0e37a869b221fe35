"""Real loop devices and file systems for the snapshot extension's tests (run as root).

The "VM" of the tests: an ext4 image file on an XFS file system made with reflink
(the host's storage), attached to a loop device and mounted as the guest's file
system. Every fixture thaws, unmounts and detaches in its teardown, whatever the
test did: a frozen mount left behind would hang every later writer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.extensions.helpers import Guest, Mounts, make_guest, run, stragglers

TOOLS = ("losetup", "mkfs.xfs", "mkfs.ext4", "fsfreeze", "mount", "umount")


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mounts and fsfreeze")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop device support in this kernel")


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    """Loop devices and mounts that are always torn down."""
    _need_root()
    m = Mounts()
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def xfs_host(tmp_path: Path, mounts: Mounts) -> Path:
    """An XFS file system with reflink (the host's storage for disk images)."""
    image = tmp_path / "host-xfs.img"
    with open(image, "wb") as fh:
        fh.truncate(512 * 1024 * 1024)
    run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
    return mounts.mount(mounts.loop(image), tmp_path / "host")


@pytest.fixture
def btrfs_host(tmp_path: Path, mounts: Mounts) -> Path:
    """A btrfs file system (the host's storage), skipped without btrfs-progs."""
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("btrfs-progs is not installed")
    image = tmp_path / "host-btrfs.img"
    with open(image, "wb") as fh:
        fh.truncate(512 * 1024 * 1024)
    run("mkfs.btrfs", "-q", str(image))
    return mounts.mount(mounts.loop(image), tmp_path / "host-btrfs")


@pytest.fixture
def ext4_host(tmp_path: Path, mounts: Mounts) -> Path:
    """An ext4 file system: no reflink, no subvolumes."""
    image = tmp_path / "host-ext4.img"
    with open(image, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    run("mkfs.ext4", "-q", str(image))
    return mounts.mount(mounts.loop(image), tmp_path / "host-ext4")


@pytest.fixture
def guest(xfs_host: Path, mounts: Mounts, tmp_path: Path) -> Guest:
    """The "VM": an ext4 image on XFS, loop-mounted as the guest file system."""
    return make_guest(xfs_host, mounts, tmp_path / "guest")


@pytest.fixture(autouse=True)
def _reap_writers() -> Iterator[None]:
    yield
    # Autouse fixtures are set up first and torn down last: by now the mount fixtures
    # have thawed everything, so a writer that was blocked can finish.
    while stragglers:
        proc = stragglers.pop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
