"""File-tree backup and restore, end to end on a local store, with real files of every kind."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kluis.catalog import KluisError
from kluis.engine.backup import BackupOptions, FileBackup
from kluis.engine.checksum_store import ChecksumStore
from kluis.engine.restore import RestoreOptions, Restorer
from tests.engine.helpers import new_repo, reopen, snapshot_tree


def make_source(root: Path) -> Path:
    """A tree with every entry type Kluis must carry."""
    src = root / "src"
    (src / "docs" / "deep" / "deeper").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    (src / "docs" / "a.txt").write_text("hello\n" * 1000)
    (src / "docs" / "deep" / "b.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "docs" / "deep" / "deeper" / "same.bin").write_bytes(
        (src / "docs" / "deep" / "b.bin").read_bytes()
    )
    (src / "empty.txt").write_bytes(b"")
    (src / "non-utf8-\xff".encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")).write_text(
        "x"
    )
    os.symlink("docs/a.txt", src / "link-rel")
    os.symlink("/nonexistent/target", src / "link-dangling")
    os.link(src / "docs" / "a.txt", src / "hardlink-to-a")
    os.mkfifo(src / "fifo")
    os.mknod(src / "null-dev", 0o620 | 0o020000, os.makedev(1, 3))
    with open(src / "sparse.img", "wb") as f:
        f.seek(20 * 1024 * 1024)
        f.write(b"tail")
        f.seek(5 * 1024 * 1024)
        f.write(b"middle data" * 100)
    os.chmod(src / "docs" / "a.txt", 0o640)
    os.chmod(src / "docs" / "deep", 0o750)
    os.chown(src / "empty.txt", 1234, 5678)
    os.setxattr(src / "docs" / "a.txt", "user.colour", b"blue")
    subprocess.run(["setfacl", "-m", "u:1234:rwx", str(src / "docs" / "deep")], check=True)
    subprocess.run(["setfacl", "-d", "-m", "g:99:rx", str(src / "docs" / "deep")], check=True)
    os.utime(src / "docs" / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return src


def test_roundtrip_every_entry_type(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    repo = new_repo(tmp_path / "repo")
    result = FileBackup(repo).run([src])
    assert result.status == "completed", result.first_warnings
    out = tmp_path / "out"
    restored = Restorer(reopen(repo), result.point_id, out).run()
    assert restored.status == "completed", restored.warnings
    got = out / str(src).lstrip("/")
    assert snapshot_tree(got) == snapshot_tree(src)
    # Hard links are links again, holes stay holes, ACLs came back.
    assert os.stat(got / "hardlink-to-a").st_ino == os.stat(got / "docs" / "a.txt").st_ino
    st = os.stat(got / "sparse.img")
    assert st.st_size == 20 * 1024 * 1024 + 4 and st.st_blocks * 512 < 1024 * 1024
    acl = subprocess.run(["getfacl", "-p", str(got / "docs" / "deep")], capture_output=True, text=True).stdout
    assert "user:1234:rwx" in acl and "default:group:99:r-x" in acl
    assert os.stat(got / "docs" / "deep").st_mtime_ns == os.stat(src / "docs" / "deep").st_mtime_ns


def test_incremental_reads_only_changed_files(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    repo = new_repo(tmp_path / "repo")
    cache = ChecksumStore(tmp_path / "scratch" / "checksums.db")
    first = FileBackup(repo, checksum_store=cache).run([src])
    second = FileBackup(repo, checksum_store=cache).run([src])
    assert second.new_bytes == 0 and second.stored_bytes < 50_000  # only unchanged trees, deduplicated
    with open(src / "docs" / "a.txt", "a") as f:
        f.write("appended")
    third = FileBackup(repo, checksum_store=cache).run([src])
    assert 0 < third.new_bytes <= 7000
    assert third.files == first.files
    out = tmp_path / "out"
    Restorer(reopen(repo), third.point_id, out).run()
    assert (out / str(src).lstrip("/") / "docs" / "a.txt").read_text().endswith("appended")
    # The older point still restores the older content.
    out2 = tmp_path / "out2"
    Restorer(reopen(repo), first.point_id, out2).run()
    assert not (out2 / str(src).lstrip("/") / "docs" / "a.txt").read_text().endswith("appended")


def test_unchanged_files_are_not_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(10_000))
    repo = new_repo(tmp_path / "repo")
    cache = ChecksumStore(tmp_path / "cs.db")
    first = FileBackup(repo, checksum_store=cache).run([src])
    assert first.files_read == 20
    second = FileBackup(repo, checksum_store=cache).run([src])
    assert second.files_read == 0 and second.new_bytes == 0 and second.bytes == first.bytes
    (src / "f3").write_bytes(os.urandom(10_000))
    third = FileBackup(repo, checksum_store=cache).run([src])
    assert third.files_read == 1 and third.new_bytes == 10_000
    # A lost checksum store costs reading, never correctness.
    fourth = FileBackup(repo, checksum_store=ChecksumStore(tmp_path / "fresh.db")).run([src])
    assert fourth.files_read == 20 and fourth.new_bytes == 0


def test_exclusions(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    (src / "cache").mkdir()
    (src / "cache" / "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55")
    (src / "cache" / "junk").write_text("junk")
    (src / "docs" / "skip.tmp").write_text("tmp")
    repo = new_repo(tmp_path / "repo")
    options = BackupOptions(
        excludes=["*.tmp", f"{src}/docs/deep/deeper"], exclude_if_present=["CACHEDIR.TAG"]
    )
    result = FileBackup(repo, options=options).run([src])
    out = tmp_path / "out"
    Restorer(reopen(repo), result.point_id, out).run()
    got = out / str(src).lstrip("/")
    assert not (got / "docs" / "skip.tmp").exists()
    assert not (got / "docs" / "deep" / "deeper").exists()
    assert not (got / "cache").exists()
    assert (got / "docs" / "deep" / "b.bin").exists()


def test_one_file_system(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "mnt").mkdir(parents=True)
    (src / "kept").write_text("kept")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "mnt")], check=True)
    try:
        (src / "mnt" / "other-fs-file").write_text("other")
        repo = new_repo(tmp_path / "repo")
        result = FileBackup(repo, options=BackupOptions(one_file_system=True)).run([src])
        out = tmp_path / "out"
        Restorer(reopen(repo), result.point_id, out).run()
        got = out / str(src).lstrip("/")
        assert (got / "kept").exists() and (got / "mnt").is_dir()
        assert not (got / "mnt" / "other-fs-file").exists()
    finally:
        subprocess.run(["umount", str(src / "mnt")], check=True)


def test_a_source_inside_another_is_backed_up_once(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    repo = new_repo(tmp_path / "repo")
    # The inner path first, a file inside too, and a sibling that only shares a prefix.
    twin = tmp_path / "src-twin"
    twin.mkdir()
    (twin / "t").write_text("twin")
    result = FileBackup(repo).run([src / "docs" / "deep", src, src / "docs" / "a.txt", twin])
    assert result.status == "completed", result.first_warnings
    alone = FileBackup(new_repo(tmp_path / "repo2")).run([src, twin])
    assert (result.files, result.dirs, result.bytes) == (alone.files, alone.dirs, alone.bytes)
    out = tmp_path / "out"
    Restorer(reopen(repo), result.point_id, out).run()
    assert snapshot_tree(out / str(src).lstrip("/")) == snapshot_tree(src)
    assert (out / str(twin).lstrip("/") / "t").read_text() == "twin"


def test_a_source_the_outer_walk_cannot_reach_is_refused(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "inner").mkdir(parents=True)
    (src / "link").symlink_to(elsewhere)
    (src / "docs" / ".nobackup").write_text("")
    repo = new_repo(tmp_path / "repo")
    cases = [
        ([src, src / "link" / "inner"], FileBackup(repo), "symbolic link"),
        ([src, src / "docs" / "deep"], FileBackup(repo, options=BackupOptions(excludes=["docs"])), "pattern"),
        (
            [src, src / "docs" / "a.txt"],
            FileBackup(repo, options=BackupOptions(exclude_if_present=[".nobackup"])),
            "marker",
        ),
    ]
    for paths, backup, why in cases:
        with pytest.raises(KluisError) as info:
            backup.run(paths)
        assert info.value.code == "BackupSourcesOverlap"
        assert why in str(info.value) and str(src) in str(info.value)
    assert not list(repo.store.list("points/"))


def test_a_source_on_another_file_system_inside_one_file_system_backup_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "mnt")], check=True)
    try:
        (src / "mnt" / "sub").mkdir()
        repo = new_repo(tmp_path / "repo")
        with pytest.raises(KluisError) as info:
            FileBackup(repo, options=BackupOptions(one_file_system=True)).run([src, src / "mnt" / "sub"])
        assert info.value.code == "BackupSourcesOverlap"
        assert "another file system" in str(info.value)
        # Without --one-file-system the outer walk reaches it: backed up once, no error.
        result = FileBackup(repo).run([src, src / "mnt" / "sub"])
        assert result.status == "completed"
    finally:
        subprocess.run(["umount", str(src / "mnt")], check=True)


def test_several_sources_and_single_files(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("just one file")
    repo = new_repo(tmp_path / "repo")
    result = FileBackup(repo).run([src / "docs", other])
    out = tmp_path / "out"
    Restorer(reopen(repo), result.point_id, out).run()
    assert (out / str(other).lstrip("/")).read_text() == "just one file"
    assert (out / str(src).lstrip("/") / "docs" / "a.txt").exists()
    assert not (out / str(src).lstrip("/") / "empty.txt").exists()


def test_selected_paths_and_globs(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    rel = str(src).lstrip("/")
    out = tmp_path / "out1"
    Restorer(reopen(repo), point, out, options=RestoreOptions(include=[f"/{rel}/docs/deep"])).run()
    assert (out / rel / "docs" / "deep" / "b.bin").exists()
    assert not (out / rel / "docs" / "a.txt").exists()
    out = tmp_path / "out2"
    Restorer(reopen(repo), point, out, options=RestoreOptions(include=[f"{rel}/docs/*.txt"])).run()
    assert (out / rel / "docs" / "a.txt").exists()
    assert not (out / rel / "docs" / "deep").exists()


def test_a_path_to_restore_that_matches_nothing_is_a_warning(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    rel = str(src).lstrip("/")
    out = tmp_path / "out"
    wanted = [f"/{rel}/docs", f"/{rel}/docs/deep", f"{rel}/docs/*.txt", f"/{rel}/dcos", "**/*.nothing"]
    result = Restorer(reopen(repo), point, out, options=RestoreOptions(include=wanted)).run()
    # Patterns inside a folder already taken whole are not reported; the typo and the glob are.
    assert result.status == "completed_with_warnings"
    assert [(w["code"], w["params"]["path"]) for w in result.warnings] == [
        ("RestorePathNotInPoint", f"/{rel}/dcos"),
        ("RestorePathNotInPoint", "**/*.nothing"),
    ]
    assert (out / rel / "docs" / "a.txt").exists()
    whole = Restorer(reopen(repo), point, tmp_path / "out2").run()
    assert whole.status == "completed" and not whole.warnings


@pytest.mark.parametrize("mode", ["overwrite", "skip", "copy"])
def test_conflict_modes(tmp_path: Path, mode: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("from backup")
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    out = tmp_path / "out"
    existing = out / str(src).lstrip("/")
    existing.mkdir(parents=True)
    (existing / "f").write_text("local edit")
    result = Restorer(reopen(repo), point, out, options=RestoreOptions(conflict=mode)).run()
    if mode == "overwrite":
        assert (existing / "f").read_text() == "from backup"
    elif mode == "skip":
        assert (existing / "f").read_text() == "local edit" and result.skipped == 1
    else:
        assert (existing / "f").read_text() == "local edit"
        assert (existing / "f.restored").read_text() == "from backup"


def test_restore_to_original_location_overwrites_in_place(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    before = snapshot_tree(src)
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    (src / "docs" / "a.txt").write_text("damaged")
    (src / "docs" / "deep" / "b.bin").unlink()
    Restorer(reopen(repo), point, "/").run()
    assert snapshot_tree(src) == before


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temporary folder an unprivileged user can reach (pytest's own is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="kluis-nobody-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_access_denied_file_is_a_warning_not_a_failure(world_tmp: Path) -> None:
    """Run the backup as an unprivileged user; a root-only file is skipped with 0x80070005."""
    tmp_path = world_tmp
    src = tmp_path / "src"
    src.mkdir()
    (src / "public").write_text("everyone may read")
    (src / "secret").write_text("root only")
    os.chmod(src / "secret", 0o600)
    for p in (tmp_path, src, src / "public"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    for d in ("repo", "scratch"):
        (tmp_path / d).mkdir()
        os.chmod(tmp_path / d, 0o777)
    # Everything is imported as root (the interpreter lives under /root), then the effective
    # user drops to nobody for the backup itself.
    script = f"""
import json, os
from pathlib import Path
import concurrent.futures.thread
from kluis.catalog import all_entries
from kluis.engine.backup import FileBackup
from tests.engine.helpers import new_repo
all_entries()
os.setegid(65534)
os.seteuid(65534)
repo = new_repo(Path({str(tmp_path / "repo")!r}))
r = FileBackup(repo, failed_log=Path({str(tmp_path / "scratch" / "failed.log")!r})).run([{str(src)!r}])
print(json.dumps(r.as_dict()))
"""
    proc = subprocess.run([sys_executable(), "-c", script], capture_output=True, text=True, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads(proc.stdout)
    assert result["status"] == "completed_with_warnings" and result["warnings"] == 1
    log = [json.loads(line) for line in (tmp_path / "scratch" / "failed.log").read_text().splitlines()]
    assert log[0]["code"] == "0x80070005" and log[0]["path"].endswith("/secret")


def sys_executable() -> str:
    import sys

    return sys.executable


def test_missing_source_is_a_catalog_error(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    with pytest.raises(KluisError) as info:
        FileBackup(repo).run([tmp_path / "nope"])
    assert info.value.code == "BackupSourceMissing"
    assert not list(repo.store.list("points/"))


def test_socket_is_skipped_with_a_note(tmp_path: Path) -> None:
    import socket

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    try:
        repo = new_repo(tmp_path / "repo")
        result = FileBackup(repo, failed_log=tmp_path / "failed.log").run([src])
    finally:
        sock.close()
    assert result.status == "completed"  # a socket is expected, not a problem
    assert "SpecialFileSkipped" in (tmp_path / "failed.log").read_text()


def test_progress_reports(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    repo = new_repo(tmp_path / "repo")
    seen = []
    FileBackup(repo, progress=lambda p: seen.append(p.as_dict())).run([src])
    assert seen and seen[-1]["files"] >= 10 and seen[-1]["bytes"] > 3_000_000
    assert {"rate", "eta", "files", "bytes"} <= set(seen[-1])


def test_cancel_commits_nothing_and_is_a_catalog_error(tmp_path: Path) -> None:
    import itertools

    src = make_source(tmp_path)
    repo = new_repo(tmp_path / "repo")
    calls = itertools.count()
    with pytest.raises(KluisError) as info:
        FileBackup(repo, should_stop=lambda: next(calls) > 5).run([src])
    assert info.value.code == "OperationCancelled"
    assert not list(repo.store.list("points/"))
    # The next run completes and restores; a cancelled restore says so too.
    point = FileBackup(repo).run([src]).point_id
    with pytest.raises(KluisError) as info:
        Restorer(reopen(repo), point, tmp_path / "out", should_stop=lambda: True).run()
    assert info.value.code == "OperationCancelled"
