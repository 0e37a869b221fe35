"""``kluis mount`` on a local repository: a real FUSE mount, read through the kernel.

The recovery point holds every kind of entry a files backup keeps (multi-chunk and
sparse files, an empty file, a symlink, a hard link, a FIFO, extended attributes,
restrictive modes); everything read back through the mount must equal the source.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kluis.agent.mount import active_mounts
from kluis.engine.backup import BackupOptions, FileBackup
from kluis.engine.repository import Repository
from kluis.stores import LocalStore
from tests.agent.helpers import Result, kluis
from tests.cli.conftest import cli_env, unmount_quietly

PASSPHRASE = "a mount test passphrase, long enough"
ITEM = "item-for-mount-tests"

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse"), reason="/dev/fuse is missing: this kernel or container has no FUSE"
)


@dataclass
class Fixture:
    """A repository with one recovery point of ``source``, and where to mount it."""

    root: Path
    source: Path
    repo: Path
    passfile: Path
    scratch: Path
    env: dict[str, str]

    def mount(self, mountpoint: Path, *extra: str) -> Result:
        """``kluis mount latest MOUNTPOINT --repo ...`` (in the background, as users run it)."""
        mountpoint.mkdir(exist_ok=True)
        args = ["mount", "latest", str(mountpoint), "--repo", str(self.repo)]
        args += ["--passphrase-file", str(self.passfile), "--scratch", str(self.scratch), "--json"]
        return kluis(*args, *extra, env=self.env)


def _make_source(src: Path) -> None:
    src.mkdir()
    (src / "docs" / "deep" / "er").mkdir(parents=True)
    (src / "docs" / "small.txt").write_text("hello through FUSE\n")
    (src / "docs" / "deep" / "er" / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    (src / "empty").write_bytes(b"")
    with open(src / "sparse.img", "wb") as f:
        f.seek(3 * 1024 * 1024)
        f.write(b"tail")
    os.symlink("docs/small.txt", src / "link")
    os.link(src / "docs" / "small.txt", src / "hardlink")
    os.mkfifo(src / "fifo")
    secret = src / "secret"
    secret.write_bytes(b"private")
    secret.chmod(0o600)
    os.setxattr(src / "docs" / "small.txt", "user.origin", b"kluis-test")
    os.utime(src / "empty", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    root = tmp_path_factory.mktemp("mount")
    source = root / "source"
    _make_source(source)
    repo_dir = root / "repo"
    repo, _wrapped, _kek = Repository.init(LocalStore(repo_dir), PASSPHRASE)
    FileBackup(repo, options=BackupOptions(item=ITEM)).run([str(source)])
    passfile = root / "passphrase"
    passfile.write_text(PASSPHRASE + "\n")
    return Fixture(root, source, repo_dir, passfile, root / "scratch", cli_env(root))


@pytest.fixture
def mountpoint(fx: Fixture, request: pytest.FixtureRequest) -> Iterator[Path]:
    path = fx.root / f"mnt-{request.node.name}"
    yield path
    unmount_quietly(path)


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_browse_and_read_everything(fx: Fixture, mountpoint: Path) -> None:
    result = fx.mount(mountpoint, "--idle-timeout", "120")
    assert result.rc == 0, result.stdout + result.stderr
    info = result.json
    assert info["item"] == ITEM and info["mountpoint"] == str(mountpoint)
    assert os.path.ismount(mountpoint)
    view = mountpoint / fx.source.relative_to("/")

    # The same names and types, everywhere.
    def listing(base: Path) -> dict[str, int]:
        return {str(p.relative_to(base)): stat.S_IFMT(p.lstat().st_mode) for p in sorted(base.rglob("*"))}

    assert listing(view) == listing(fx.source)
    # Byte-identical content, through the kernel's page cache and our chunk cache.
    for path in fx.source.rglob("*"):
        if path.is_file() and not path.is_symlink() and stat.S_ISREG(path.lstat().st_mode):
            assert (view / path.relative_to(fx.source)).read_bytes() == path.read_bytes(), path
    # A read in the middle of a multi-chunk file, crossing chunk boundaries.
    big = fx.source / "docs" / "deep" / "er" / "big.bin"
    with open(view / big.relative_to(fx.source), "rb") as f:
        f.seek(1_234_567)
        assert f.read(2_500_000) == big.read_bytes()[1_234_567 : 1_234_567 + 2_500_000]
    # Metadata as it was backed up.
    for name in ("secret", "empty", "docs/small.txt"):
        want, got = (fx.source / name).lstat(), (view / name).lstat()
        assert (got.st_mode, got.st_uid, got.st_gid, got.st_size) == (
            want.st_mode,
            want.st_uid,
            want.st_gid,
            want.st_size,
        ), name
        assert got.st_mtime_ns == want.st_mtime_ns, name
    assert os.readlink(view / "link") == "docs/small.txt"
    assert (view / "link").read_text() == "hello through FUSE\n"
    assert (view / "hardlink").stat().st_ino == (view / "docs" / "small.txt").stat().st_ino
    assert (view / "hardlink").stat().st_nlink == 2
    assert os.getxattr(view / "docs" / "small.txt", "user.origin") == b"kluis-test"
    assert stat.S_ISFIFO((view / "fifo").lstat().st_mode)
    # Read-only.
    with pytest.raises(OSError) as caught:
        (view / "new-file").write_text("no")
    assert caught.value.errno == errno.EROFS
    # The agent sees the mount of the item (a scheduled backup of it waits).
    marks = active_mounts(fx.scratch, ITEM)
    assert len(marks) == 1 and marks[0].mountpoint == str(mountpoint) and marks[0].point
    assert active_mounts(fx.scratch, "another-item") == []

    done = kluis("unmount", str(mountpoint), env=fx.env)
    assert done.rc == 0, done.stderr
    assert not os.path.ismount(mountpoint)
    _wait(lambda: not list((fx.scratch / "mounts").glob("*.json")), 10, "the mount marker to go")


def test_unmounts_itself_when_idle(fx: Fixture, mountpoint: Path) -> None:
    # Long enough that a busy machine still reads the file before the timer runs out.
    result = fx.mount(mountpoint, "--idle-timeout", "5")
    assert result.rc == 0, result.stdout + result.stderr
    view = mountpoint / fx.source.relative_to("/")
    assert (view / "docs" / "small.txt").read_text() == "hello through FUSE\n"
    started = time.monotonic()
    _wait(lambda: not os.path.ismount(mountpoint), 30, "the idle mount to unmount itself")
    assert time.monotonic() - started >= 4.0
    _wait(lambda: not active_mounts(fx.scratch, ITEM), 5, "the marker to be removed")


def test_a_killed_mount_leaves_no_live_marker(fx: Fixture, mountpoint: Path) -> None:
    result = fx.mount(mountpoint, "--idle-timeout", "120")
    assert result.rc == 0, result.stdout + result.stderr
    marks = active_mounts(fx.scratch, ITEM)
    assert len(marks) == 1
    os.kill(marks[0].pid, signal.SIGKILL)
    _wait(lambda: not active_mounts(fx.scratch, ITEM), 10, "the stale marker to be dropped")
    assert not list((fx.scratch / "mounts").glob(f"{ITEM}.*.json"))


def test_mount_failures_are_coded(fx: Fixture, mountpoint: Path) -> None:
    mountpoint.mkdir()
    (mountpoint / "occupied").write_text("x")
    busy = fx.mount(mountpoint)
    assert busy.rc == 9 and busy.error["code"] == "RecoveryMountFailed"
    assert "not empty" in busy.error["message"]
    (mountpoint / "occupied").unlink()
    wrong = fx.root / "wrong-passphrase"
    wrong.write_text("not the passphrase of this repository\n")
    refused = kluis(
        "mount", "latest", str(mountpoint), "--repo", str(fx.repo), "--passphrase-file", str(wrong), "--json",
        env=fx.env,
    )  # fmt: skip
    assert refused.rc == 3 and refused.error["code"] == "RepoPassphraseIncorrect"
    # A disk image's recovery point has no files to show.
    from kluis.engine.disk_backup import DiskBackup

    image = fx.root / "disk.img"
    image.write_bytes(os.urandom(256 * 1024))
    disk_repo = fx.root / "disk-repo"
    repo, _w, _k = Repository.init(LocalStore(disk_repo), PASSPHRASE)
    DiskBackup(repo, [("sda", str(image))]).run()
    disk = kluis(
        "mount", "latest", str(mountpoint), "--repo", str(disk_repo), "--passphrase-file", str(fx.passfile),
        "--json", env=fx.env,
    )  # fmt: skip
    assert disk.rc == 9 and disk.error["code"] == "RecoveryMountFailed"
    assert "no file system" in disk.error["message"] and str(mountpoint) in disk.error["message"]
    nothing = kluis("unmount", str(mountpoint), env=fx.env)
    assert nothing.rc == 9 and "nothing is mounted" in nothing.stderr
    assert not os.path.ismount(mountpoint)


def test_foreground_mount_stops_on_sigterm(fx: Fixture, mountpoint: Path) -> None:
    import subprocess
    import sys

    mountpoint.mkdir()
    args = [
        sys.executable, "-m", "kluis", "mount", "latest", str(mountpoint), "--repo", str(fx.repo),
        "--passphrase-file", str(fx.passfile), "--foreground", "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(args, env=fx.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        text = ""
        while True:  # the JSON is printed once the kernel has the mount
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "no output"
            text += line
            if line.startswith("}"):
                break
        ready = json.loads(text)
        assert ready["pid"] == proc.pid and os.path.ismount(mountpoint)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stderr.read() if proc.stderr else ""
        assert not os.path.ismount(mountpoint)
    finally:
        if proc.poll() is None:
            proc.kill()
