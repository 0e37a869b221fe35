"""File recovery from disk points whose file systems are mounted live on the same host.

A disk point of a btrfs (and of an XFS) disk is mounted with ``kluis mount`` while the
original file system, with the same UUID, is still mounted here: the point's copy must
mount read-only beside it and show the files as they were at the backup, not the live
file system's current files (btrfs would otherwise hand back the mounted file system for
a device with a known fsid; XFS refuses a duplicate UUID without ``nouuid``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kluis.engine.disk_backup import DiskBackup
from kluis.engine.repository import Repository
from kluis.stores import LocalStore
from tests.agent.helpers import kluis
from tests.cli.conftest import cli_env
from tests.extensions.helpers import Mounts, run

PASSPHRASE = "a duplicate uuid mount test passphrase"
MIB = 1024 * 1024
TOOLS = ("losetup", "partx", "blkid", "mount", "umount", "mkfs.btrfs", "mkfs.xfs", "fsfreeze")


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Path, Mounts]]:
    """A work folder and a Mounts that undoes the live mounts and loop devices."""
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices and mounts")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: this kernel or container has no FUSE")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    mounts = Mounts()
    try:
        yield tmp_path, mounts
    finally:
        mounts.close()


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh if (line.split()[4] + "/").startswith(prefix)]


def _uuid(device: str) -> str:
    return run("blkid", "-p", "-s", "UUID", "-o", "value", device).strip()


@pytest.mark.parametrize(("fstype", "size_mib"), [("btrfs", 160), ("xfs", 320)])
def test_point_mounts_beside_its_live_twin(live: tuple[Path, Mounts], fstype: str, size_mib: int) -> None:
    root, mounts = live
    image = root / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(size_mib * MIB)
    run(f"mkfs.{fstype}", "-q", "-f", str(image))
    device = mounts.loop(image)
    live_dir = mounts.mount(device, root / "live")
    (live_dir / "docs").mkdir()
    (live_dir / "docs" / "report.txt").write_text("the report as backed up\n")
    (live_dir / "blob.bin").write_bytes(os.urandom(2 * MIB + 3))
    blob = (live_dir / "blob.bin").read_bytes()

    # Back the disk up while its file system is frozen (consistent), then keep using it.
    repo_dir = root / "repo"
    repo, _w, _k = Repository.init(LocalStore(repo_dir), PASSPHRASE)
    run("fsfreeze", "-f", str(live_dir))
    try:
        DiskBackup(repo, [("sdb", device)], item="dup-uuid").run()
    finally:
        run("fsfreeze", "-u", str(live_dir))
    (live_dir / "docs" / "report.txt").write_text("edited after the backup\n")
    (live_dir / "after.txt").write_text("written after the backup\n")
    subprocess.run(["sync", "-f", str(live_dir)], check=True)

    passfile = root / "pass"
    passfile.write_text(PASSPHRASE + "\n")
    env = cli_env(root)
    env["KLUIS_RUN_DIR"] = str(root / "run")
    target = root / "recovered"
    target.mkdir()
    args = ["mount", "latest", str(target), "--repo", str(repo_dir), "--passphrase-file", str(passfile)]
    try:
        result = kluis(*args, "--json", "--idle-timeout", "120", env=env)
        assert result.rc == 0, result.stdout + result.stderr
        session = json.loads(next((root / "run" / "disk-mounts").glob("*.json")).read_text())
        assert session["warnings"] == [], session
        recovered = target / "sdb"
        assert os.path.ismount(recovered), session
        # The copy: same UUID as the live file system, its own device, the files as backed up.
        fs = session["file_systems"][0]
        assert fs["where"] == "sdb" and fs["type"] == fstype, session
        assert fs["device"] != device and _uuid(fs["device"]) == _uuid(device), session
        assert (recovered / "docs" / "report.txt").read_text() == "the report as backed up\n"
        assert (recovered / "blob.bin").read_bytes() == blob
        assert not (recovered / "after.txt").exists()
        # The live file system is untouched and still writable.
        assert (live_dir / "docs" / "report.txt").read_text() == "edited after the backup\n"
        (live_dir / "still-writable.txt").write_text("yes\n")
        assert os.stat(recovered).st_dev != os.stat(live_dir).st_dev
    finally:
        done = kluis("unmount", str(target), env=env)
    assert done.rc == 0, done.stdout + done.stderr
    assert not _mounts_below(target) and not _mounts_below(root / "run")
    assert os.path.ismount(live_dir) and (live_dir / "still-writable.txt").read_text() == "yes\n"
