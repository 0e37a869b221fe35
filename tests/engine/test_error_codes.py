"""Engine catalog codes met for real: a file that grows while it is read, a repository from a newer
Kluis, recovery points that are not there.

The repository commands run as ``kluis repo ...`` subprocesses the way a user runs them
on a repository of their own; the growing file is appended to by a separate writer
process for the whole backup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kluis.catalog import KluisError
from kluis.catalog.registry import all_entries
from kluis.engine.backup import FileBackup
from kluis.engine.format import FORMAT_VERSION
from kluis.engine.repository import Repository
from kluis.engine.restore import Restorer
from kluis.stores import LocalStore
from tests.agent.helpers import Result, kluis
from tests.engine.helpers import PASSPHRASE, new_repo, reopen

# Appends one byte every 2 ms until stopped; says "ready" once the first byte is in the file.
_WRITER = r"""
import sys, time
with open(sys.argv[1], "ab", buffering=0) as f:
    f.write(b"+")
    print("ready", flush=True)
    while True:
        f.write(b"+")
        time.sleep(0.002)
"""
GROWING_SIZE = 48 * 1024 * 1024  # reading it takes far longer than the writer's 2 ms between appends


def _json_error(result: Result, code: str) -> dict[str, object]:
    """A ``--json`` command failed with ``code``: its exit code and the error's code field."""
    assert result.rc == all_entries()[code].exit_code, (result.rc, result.stdout, result.stderr)
    error = result.error
    assert error["code"] == code, error
    return error


@pytest.fixture
def passfile(tmp_path: Path) -> Path:
    """The repository's passphrase in a file, as ``--passphrase-file`` takes it."""
    path = tmp_path / "passphrase"
    path.write_text(PASSPHRASE + "\n")
    return path


@pytest.fixture
def appending(tmp_path: Path) -> Iterator[Path]:
    """A large file another process keeps appending to while the test runs."""
    path = tmp_path / "src" / "growing.log"
    path.parent.mkdir()
    with open(path, "wb") as f:
        for _ in range(GROWING_SIZE // (1 << 20)):
            f.write(os.urandom(1 << 20))
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        yield path
    finally:
        writer.kill()
        writer.wait()


def test_file_growing_while_it_is_read(tmp_path: Path, appending: Path) -> None:
    steady = appending.parent / "steady.txt"
    steady.write_bytes(b"this one does not change\n" * 100)
    repo = new_repo(tmp_path / "repo")
    log = tmp_path / "scratch" / "failed-files.log"
    backup = FileBackup(repo, failed_log=log)
    result = backup.run([appending.parent])
    assert result.status == "completed_with_warnings", result
    changed = [e for e in backup.errors if e.code == "FileChangedWhileReading"]
    assert [e.params["path"] for e in changed] == [str(appending)], backup.errors
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["path"], e["code"]) for e in logged] == [(str(appending), "FileChangedWhileReading")]
    # The file that stood still is backed up as it is.
    out = tmp_path / "out"
    Restorer(reopen(repo), result.point_id, out).run()
    assert (out / str(steady).lstrip("/")).read_bytes() == steady.read_bytes()


def test_repository_written_by_a_newer_format(tmp_path: Path, passfile: Path) -> None:
    repo_dir = tmp_path / "repo"
    new_repo(repo_dir)
    config_file = repo_dir / "config"
    config = json.loads(config_file.read_text())
    config["version"] = FORMAT_VERSION + 1
    config_file.write_text(json.dumps(config, indent=1))

    listed = kluis("repo", "points", "--repo", str(repo_dir), "--passphrase-file", str(passfile), "--json")
    error = _json_error(listed, "RepoFormatUnsupported")
    assert error["params"] == {
        "location": LocalStore(repo_dir).url,
        "version": FORMAT_VERSION + 1,
        "supported": FORMAT_VERSION,
    }
    with pytest.raises(KluisError) as opened:
        Repository.open(LocalStore(repo_dir), passphrase=PASSPHRASE)
    assert opened.value.code == "RepoFormatUnsupported"


def test_recovery_point_that_is_not_there(tmp_path: Path, passfile: Path) -> None:
    repo_dir = tmp_path / "repo"
    repo = new_repo(repo_dir)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("kept\n")
    point = FileBackup(repo).run([src]).point_id
    missing = "f" * 32 if not point.startswith("f") else "e" * 32

    # A typed id (or prefix) that names no point of this repository.
    target = tmp_path / "target"
    restored = kluis(
        "repo", "restore", missing[:8], "--repo", str(repo_dir), "--target", str(target),
        "--passphrase-file", str(passfile), "--json",
    )  # fmt: skip
    error = _json_error(restored, "RecoveryPointNotFound")
    assert error["params"] == {"point": missing[:8]}
    assert not target.exists()

    # A point that was listed and then deleted from the store before its restore began.
    (repo_dir / "points" / point).unlink()
    with pytest.raises(KluisError) as gone:
        Restorer(reopen(repo), point, target).run()
    assert gone.value.code == "RecoveryPointNotFound"
    assert gone.value.params == {"point": point}


def test_passphrase_file_that_cannot_be_read(tmp_path: Path, passfile: Path) -> None:
    repo_dir = tmp_path / "repo"
    new_repo(repo_dir)
    src = tmp_path / "src"
    src.mkdir()
    binary = tmp_path / "binary-passphrase"
    binary.write_bytes(b"\xff\xfe\x00not text")
    for bad in (tmp_path / "no-such-file", tmp_path, binary):
        for argv in (
            ["repo", "backup", str(src), "--repo", str(repo_dir), "--passphrase-file", str(bad), "--json"],
            ["repo", "points", "--repo", str(repo_dir), "--passphrase-file", str(bad), "--json"],
        ):
            result = kluis(*argv)
            error = _json_error(result, "ValidationFailed")
            assert str(bad) in str(error["message"]), error
            assert "Traceback" not in result.stderr
    assert not (repo_dir / "points").exists() or not list((repo_dir / "points").iterdir())


def test_empty_source_path_and_unusable_scratch_folder(tmp_path: Path, passfile: Path) -> None:
    repo_dir = tmp_path / "repo"
    new_repo(repo_dir)
    src = tmp_path / "src"
    src.mkdir()
    base = ["--repo", str(repo_dir), "--passphrase-file", str(passfile), "--json"]
    # "" would be the current folder: an unset variable must not back that up.
    empty = kluis("repo", "backup", "", *base, cwd=src)
    params = _json_error(empty, "BackupSourceMissing")["params"]
    assert isinstance(params, dict) and params["path"] == '""'
    with pytest.raises(KluisError) as info:
        FileBackup(reopen(new_repo(tmp_path / "repo2"))).run([str(src), ""])
    assert info.value.code == "BackupSourceMissing"
    # A scratch folder that cannot be created is named, before anything is read or stored.
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for scratch, why in ((blocker, "in the way"), (blocker / "below", "Not a directory")):
        result = kluis("repo", "backup", str(src), *base, "--scratch", str(scratch))
        error = _json_error(result, "ScratchFolderInvalid")
        assert why in str(error["message"]) and "Traceback" not in result.stderr
    assert not (repo_dir / "points").exists() or not list((repo_dir / "points").iterdir())


def test_thread_counts_below_their_minimum_are_usage_errors(tmp_path: Path, passfile: Path) -> None:
    repo_dir = tmp_path / "repo"
    new_repo(repo_dir)
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1024 * 1024))
    base = ["--repo", str(repo_dir), "--passphrase-file", str(passfile)]
    for argv in (
        ["repo", "backup", str(tmp_path), *base, "--threads", "-3"],
        ["repo", "backup-disk", str(image), *base, "--threads", "0"],
        ["repo", "restore-disk", "latest", str(tmp_path / "out.img"), *base, "--threads", "0"],
    ):
        result = kluis(*argv)
        assert result.rc == 2 and "--threads" in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (repo_dir / "points").exists() or not list((repo_dir / "points").iterdir())
