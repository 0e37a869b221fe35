"""File-level recovery from a disk point: ``kluis mount POINT DIR --repo`` (root, loop devices, FUSE).

Two disks in one point: an ext4 file system on a whole disk, and a partitioned
disk whose first partition holds XFS. Both are mounted read-only under DIR through
the helper FUSE mount and read-only loop devices; files read back byte-identical;
``kluis unmount``, the idle timeout and SIGTERM each leave no mount, loop device or
directory behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kluis.engine.disk_backup import DiskBackup
from kluis.engine.repository import Repository
from kluis.stores import LocalStore
from tests.agent.helpers import Result, kluis
from tests.cli.conftest import cli_env

PASSPHRASE = "a disk mount test passphrase, long enough"
ITEM = "item-for-disk-mount-tests"
TOOLS = ("losetup", "partx", "blkid", "mount", "umount", "mkfs.ext4", "mkfs.xfs", "sfdisk")
MIB = 1024 * 1024


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


@dataclass
class Fixture:
    """A repository holding one disk point, the source files, and a clean environment."""

    root: Path
    repo: Path
    passfile: Path
    env: dict[str, str]
    images: dict[str, Path]
    ext4_files: dict[str, bytes]
    xfs_files: dict[str, bytes]

    @property
    def run_dir(self) -> Path:
        return Path(self.env["KLUIS_RUN_DIR"]) / "disk-mounts"

    def mount(self, mountpoint: Path, *extra: str) -> Result:
        """``kluis mount latest DIR --repo ...`` in the background, as users run it."""
        mountpoint.mkdir(exist_ok=True)
        args = ["mount", "latest", str(mountpoint), "--repo", str(self.repo)]
        args += ["--passphrase-file", str(self.passfile), "--json", *extra]
        return kluis(*args, env=self.env)


def _files() -> tuple[dict[str, bytes], dict[str, bytes]]:
    ext4 = {
        "hello.txt": b"hello from ext4\n",
        "dir/sub/random.bin": os.urandom(3 * MIB + 17),
        "empty": b"",
    }
    xfs = {"notes/xfs.txt": b"hello from xfs on a partition\n", "big.bin": os.urandom(2 * MIB + 5)}
    return ext4, xfs


def _write_tree(base: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)


def _make_ext4(path: Path, files: dict[str, bytes], tmp: Path) -> None:
    """A whole-disk ext4 image populated without mounting (mkfs -d)."""
    src = tmp / "ext4-src"
    _write_tree(src, files)
    with open(path, "wb") as fh:
        fh.truncate(32 * MIB)
    _run("mkfs.ext4", "-q", "-F", "-d", str(src), str(path))


def _make_xfs_partitioned(path: Path, files: dict[str, bytes], tmp: Path) -> None:
    """A disk with an MBR table and XFS in its first partition (at 1 MiB)."""
    size = 320 * MIB  # mkfs.xfs wants about 300 MiB
    with open(path, "wb") as fh:
        fh.truncate(size)
    subprocess.run(["sfdisk", "-q", str(path)], input="start=2048, type=83\n", text=True, check=True)
    loop = _run("losetup", "-f", "--show", "-o", str(MIB), "--sizelimit", str(size - MIB), str(path)).strip()
    target = tmp / "xfs-mnt"
    target.mkdir()
    try:
        _run("mkfs.xfs", "-q", "-f", loop)
        _run("mount", loop, str(target))
        try:
            _write_tree(target, files)
        finally:
            _run("umount", str(target))
    finally:
        _run("losetup", "-d", loop)


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices and mounts")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: this kernel or container has no FUSE")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop device support in this kernel")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    root = tmp_path_factory.mktemp("diskmount")
    ext4_files, xfs_files = _files()
    images = {"sda": root / "sda.img", "sdb": root / "sdb.img"}
    _make_ext4(images["sda"], ext4_files, root)
    _make_xfs_partitioned(images["sdb"], xfs_files, root)
    repo_dir = root / "repo"
    repo, _wrapped, _kek = Repository.init(LocalStore(repo_dir), PASSPHRASE)
    DiskBackup(repo, [("sda", images["sda"]), ("sdb", images["sdb"])], item=ITEM).run()
    passfile = root / "passphrase"
    passfile.write_text(PASSPHRASE + "\n")
    env = cli_env(root)
    env["KLUIS_RUN_DIR"] = str(root / "run")
    return Fixture(root, repo_dir, passfile, env, images, ext4_files, xfs_files)


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as fh:
        return [line.split()[4] for line in fh if (line.split()[4] + "/").startswith(prefix)]


def _loops_of(base: Path) -> list[str]:
    """``losetup -a`` lines whose backing file lies below ``base``."""
    return [line for line in _run("losetup", "-a").splitlines() if str(base) in line]


def _cleanup(fx: Fixture, mountpoint: Path) -> None:
    """Whatever a failed test left behind: file systems, loop devices, helper FUSE mounts."""
    for target in reversed(_mounts_below(mountpoint)):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    for line in _loops_of(fx.run_dir):
        subprocess.run(["losetup", "-d", line.split(":")[0]], capture_output=True, check=False)
    for target in reversed(_mounts_below(fx.run_dir)):
        subprocess.run(["fusermount3", "-u", "-z", target], capture_output=True, check=False)


@pytest.fixture
def mountpoint(fx: Fixture, request: pytest.FixtureRequest) -> Iterator[Path]:
    path = fx.root / f"mnt-{request.node.name}"
    try:
        yield path
    finally:
        _cleanup(fx, path)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _session(fx: Fixture) -> dict[str, object]:
    files = list(fx.run_dir.glob("*.json"))
    assert len(files) == 1, files
    data: dict[str, object] = json.loads(files[0].read_text())
    return data


def _gone(fx: Fixture, mountpoint: Path) -> bool:
    return (
        not _mounts_below(mountpoint)
        and not _mounts_below(fx.run_dir)
        and not _loops_of(fx.run_dir)
        and not list(fx.run_dir.glob("*.json"))
        and not any(mountpoint.iterdir())
    )


def test_mount_read_readonly_and_unmount(fx: Fixture, mountpoint: Path) -> None:
    result = fx.mount(mountpoint, "--idle-timeout", "120")
    assert result.rc == 0, result.stdout + result.stderr
    assert result.json["item"] == ITEM
    session = _session(fx)
    assert sorted(str(f["where"]) for f in session["file_systems"]) == ["sda", "sdb/part1"]  # type: ignore[attr-defined,index]
    assert session["warnings"] == []
    # The helper FUSE mount serves the images byte-identical.
    images = Path(str(session["images"]))
    for name, source in fx.images.items():
        assert (images / name).read_bytes() == source.read_bytes(), name
    # Each image sits on a read-only loop device backed by the helper file.
    loops = _loops_of(fx.run_dir)
    assert any(str(images / "sda") in line for line in loops), loops
    assert any(str(images / "sdb") in line for line in loops), loops
    # The file systems, with the files as they were.
    for rel, data in fx.ext4_files.items():
        assert (mountpoint / "sda" / rel).read_bytes() == data, rel
    for rel, data in fx.xfs_files.items():
        assert (mountpoint / "sdb" / "part1" / rel).read_bytes() == data, rel
    # Read-only all the way down.
    for target in (mountpoint / "sda" / "hello.txt", mountpoint / "sdb" / "part1" / "new.txt"):
        with pytest.raises(OSError) as info, open(target, "ab") as fh:
            fh.write(b"x")
        assert info.value.errno == errno.EROFS, target
    with pytest.raises(OSError) as info:
        os.open(images / "sda", os.O_RDWR)
    assert info.value.errno == errno.EROFS

    done = kluis("unmount", str(mountpoint), env=fx.env)
    assert done.rc == 0, done.stdout + done.stderr
    assert _gone(fx, mountpoint), (_mounts_below(mountpoint), _loops_of(fx.run_dir))
    assert not images.exists()


def test_idle_timeout_and_sigterm_clean_up(fx: Fixture, mountpoint: Path) -> None:
    # Long enough that a busy machine opens the file before the timer runs out.
    result = fx.mount(mountpoint, "--idle-timeout", "4")
    assert result.rc == 0, result.stdout + result.stderr
    # Someone working below DIR keeps it mounted past the idle timeout.
    holder = open(mountpoint / "sda" / "hello.txt", "rb")  # noqa: SIM115
    try:
        time.sleep(6)
        assert _mounts_below(mountpoint), "unmounted while a file was open"
    finally:
        holder.close()
    _wait(lambda: _gone(fx, mountpoint), 40, "the idle timeout to undo the mount")

    second = mountpoint.parent / (mountpoint.name + "-term")
    try:
        result = fx.mount(second, "--idle-timeout", "120")
        assert result.rc == 0, result.stdout + result.stderr
        pid = int(str(_session(fx)["pid"]))
        assert (second / "sda" / "hello.txt").read_bytes() == fx.ext4_files["hello.txt"]
        os.kill(pid, signal.SIGTERM)
        _wait(lambda: _gone(fx, second), 20, "SIGTERM to undo the mount")
    finally:
        _cleanup(fx, second)


def test_no_file_system_fails_coded_and_leaves_nothing(fx: Fixture, mountpoint: Path) -> None:
    image = fx.root / "noise.img"
    image.write_bytes(os.urandom(256 * 1024))
    other = fx.root / "noise-repo"
    repo, _w, _k = Repository.init(LocalStore(other), PASSPHRASE)
    DiskBackup(repo, [("sdz", str(image))]).run()
    mountpoint.mkdir()
    args = ["mount", "latest", str(mountpoint), "--repo", str(other), "--passphrase-file", str(fx.passfile)]
    result = kluis(*args, "--json", env=fx.env)
    assert result.rc == 9 and result.error["code"] == "RecoveryMountFailed", result.stdout + result.stderr
    assert "sdz: no file system was found on it" in result.error["message"]
    assert _gone(fx, mountpoint)
    # With no session on DIR, unmount is the plain "nothing is mounted there".
    done = kluis("unmount", str(mountpoint), env=fx.env)
    assert done.rc == 9 and "nothing is mounted" in done.stderr
