"""Fast restore paths: direct creation, conflicts met at creation, metadata on descriptors."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import threading
from pathlib import Path

import pytest

from kluis.catalog import KluisError
from kluis.engine.backup import FileBackup
from kluis.engine.restore import RestoreOptions, Restorer
from tests.engine.helpers import folders_of_random_files, new_repo, reopen, snapshot_tree


def many_files(root: Path) -> Path:
    """Folders of small and mid-sized files, with hard links, xattrs and odd owners."""
    src = root / "src"
    rng = random.Random(7)
    for d in range(6):
        folder = src / f"d{d}" / "sub"
        folder.mkdir(parents=True)
        for f in range(45):
            size = rng.choice([0, 10, 3000, 70_000, 300_000])
            (folder / f"f{f}").write_bytes(rng.randbytes(size))
            os.chmod(folder / f"f{f}", rng.choice([0o600, 0o644, 0o4755, 0o640]))
        os.chown(folder / "f3", 4321, 8765)
        os.setxattr(folder / "f4", "user.note", b"kept")
        os.link(folder / "f5", src / f"d{d}" / "link-to-f5")
        os.symlink("sub/f6", src / f"d{d}" / "sym")
        os.utime(folder, ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_001))
    return src


@pytest.mark.parametrize("threads", [1, 6])
def test_many_files_roundtrip(tmp_path: Path, threads: int) -> None:
    src = many_files(tmp_path)
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    out = tmp_path / "out"
    result = Restorer(reopen(repo), point, out, options=RestoreOptions(threads=threads)).run()
    assert result.status == "completed", result.warnings
    got = out / str(src).lstrip("/")
    assert snapshot_tree(got) == snapshot_tree(src)
    for d in range(6):
        assert os.stat(got / f"d{d}" / "link-to-f5").st_ino == os.stat(got / f"d{d}" / "sub" / "f5").st_ino
        assert os.stat(got / f"d{d}" / "sub").st_mtime_ns == 1_500_000_000_000_000_001
    # A second restore over the first replaces everything in place and leaves no temporary names.
    again = Restorer(reopen(repo), point, out, options=RestoreOptions(threads=threads)).run()
    assert again.status == "completed", again.warnings
    assert snapshot_tree(got) == snapshot_tree(src)
    assert not [p for p in out.rglob("*") if p.name.startswith(".kluis-restore-")]


def test_target_with_default_acl_does_not_leak_into_restored_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "inner" / "plain.txt").write_text("no acl here")
    (src / "top.txt").write_text("none either")
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(out)], check=True)
    result = Restorer(reopen(repo), point, out).run()
    assert result.status == "completed", result.warnings
    got = out / str(src).lstrip("/")
    assert snapshot_tree(got) == snapshot_tree(src)
    for p in (got / "top.txt", got / "inner" / "plain.txt", got / "inner"):
        assert "system.posix_acl_access" not in os.listxattr(p), p


@pytest.mark.parametrize("conflict", ["overwrite", "skip", "copy"])
def test_conflicts_with_links_and_files_in_the_way(tmp_path: Path, conflict: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("from backup")
    (src / "other").write_text("second")
    os.link(src / "file", src / "hard")
    os.symlink("file", src / "sym")
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    out = tmp_path / "out"
    base = out / str(src).lstrip("/")
    base.mkdir(parents=True)
    # What is already there: a link to outside under a file's name, a plain file under a
    # link's name, a local edit under the hard link's name.
    os.symlink(outside / "victim", base / "file")
    (base / "sym").write_text("local sym")
    (base / "hard").write_text("local hard")
    result = Restorer(reopen(repo), point, out, options=RestoreOptions(conflict=conflict)).run()
    assert (outside / "victim").read_text() == "original"
    assert (base / "other").read_text() == "second"  # no conflict: always restored
    if conflict == "overwrite":
        assert not (base / "file").is_symlink() and (base / "file").read_text() == "from backup"
        assert os.readlink(base / "sym") == "file"
        assert os.stat(base / "hard").st_ino == os.stat(base / "file").st_ino
    elif conflict == "skip":
        assert result.skipped == 3
        assert (base / "file").is_symlink()
        assert (base / "sym").read_text() == "local sym"
        assert (base / "hard").read_text() == "local hard"
    else:
        assert (base / "file").is_symlink()
        assert (base / "file.restored").read_text() == "from backup"
        assert os.readlink(base / "sym.restored") == "file"
        assert os.stat(base / "hard.restored").st_ino == os.stat(base / "file.restored").st_ino
        assert (base / "hard").read_text() == "local hard"
    assert not [p for p in out.rglob("*") if p.name.startswith(".kluis-restore-")]


def test_a_stopped_restore_closes_the_folders_of_batches_that_never_ran(tmp_path: Path) -> None:
    src = tmp_path / "src"
    folders_of_random_files(src, 12, 3, 2000)
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    gate = threading.Event()
    main_calls = itertools.count()

    def should_stop() -> bool:
        if threading.current_thread() is not threading.main_thread():
            gate.wait(10)  # the one worker holds its first file until the walk has stopped
            return True
        if next(main_calls) < 30:
            return False
        # The walk stops with batches queued behind the held one; they are cancelled, then
        # the worker is let go.
        threading.Timer(0.5, gate.set).start()
        return True

    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(KluisError) as info:
        Restorer(
            reopen(repo), point, tmp_path / "out", options=RestoreOptions(threads=1), should_stop=should_stop
        ).run()
    assert info.value.code == "OperationCancelled"
    assert gate.is_set()
    assert len(os.listdir("/proc/self/fd")) == before
