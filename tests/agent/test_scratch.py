"""The scratch-folder checks on real folders and files, each failure with its own code and numbers."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from kluis.agent import scratch
from kluis.catalog import KluisError
from kluis.engine.checksum_store import ChecksumStore


def _code(exc: pytest.ExceptionInfo[KluisError]) -> str:
    return exc.value.code


def test_a_healthy_folder_passes_and_opens_the_checksum_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"x" * 10_000)
    (tmp_path / "s").mkdir()
    found = scratch.check_before_job(tmp_path / "s", item_id="item1", paths=[str(data)])
    try:
        # A first backup: the sources' file system has room to spare, so the job need not wait
        # for their exact size, which du counts beside it (the folder's own size included).
        assert found.protected_bytes is None and found.size is not None
        counted = found.size.result(30)
        assert counted is not None and 10_000 <= counted < 10_000 + 64 * 1024
        seen: list[int] = []
        found.size.when_counted(seen.append)
        assert seen == [counted]
        used = scratch.source_used_bytes([str(data)])
        # 5% of the used space (which moves a little while other processes write).
        assert found.free > found.needed
        assert abs(found.needed - max(scratch.MIN_FREE, int(used * scratch.FREE_SHARE))) < 0.01 * used
        assert found.checksums is not None and found.checksums.path == tmp_path / "s/items/item1/checksums.db"
    finally:
        assert found.checksums is not None
        found.checksums.close()


def test_missing_or_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(KluisError) as exc:
        scratch.check_before_job(tmp_path / "absent", item_id=None)
    assert _code(exc) == "ScratchFolderInvalid" and "does not exist" in exc.value.message
    (tmp_path / "file").write_text("x")
    with pytest.raises(KluisError) as exc:
        scratch.check_before_job(tmp_path / "file", item_id=None)
    assert _code(exc) == "ScratchFolderInvalid" and "not a directory" in exc.value.message


def test_free_space_must_be_five_percent_of_the_protected_data(tmp_path: Path) -> None:
    layout = scratch.Layout(tmp_path)
    scratch.record_backup_bytes(layout, "big", 10**18)  # an exabyte: 5% of it is on no disk here
    with pytest.raises(KluisError) as exc:
        scratch.check_before_job(tmp_path, item_id="big")
    assert _code(exc) == "SalLowDiskSpace"
    message = exc.value.message
    assert str(tmp_path) in message and "free" in message
    assert "44.4 PiB" in message  # needed: 5% of 10**18 bytes
    assert "5% of about" in message


def test_temporary_area_unusable(tmp_path: Path) -> None:
    (tmp_path / "tmp").write_text("a file where the temporary area should be")
    with pytest.raises(KluisError) as exc:
        scratch.check_before_job(tmp_path, item_id=None)
    assert _code(exc) == "SalVhdInitializationError" and str(tmp_path / "tmp") in exc.value.message


def test_checksum_store_that_cannot_be_opened(tmp_path: Path) -> None:
    db = scratch.Layout(tmp_path).checksum_store("item1")
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not an SQLite database, " * 200)
    with pytest.raises(KluisError) as exc:
        scratch.check_before_job(tmp_path, item_id="item1", paths=[])
    assert _code(exc) == "SalChecksumStoreInitializationFailed" and str(db) in exc.value.message


def test_change_detection_state_damaged(tmp_path: Path) -> None:
    db = scratch.Layout(tmp_path).checksum_store("item1")
    store = ChecksumStore(db)
    for i in range(300):
        store.set_meta(f"key{i}", "v" * 200)  # several pages of change-detection settings
    store.record(b"/data/a", 1, 2, 3, 4, 5, [bytes(32)])
    store.close()
    con = sqlite3.connect(db)
    (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'meta'").fetchone()
    (page_size,) = con.execute("PRAGMA page_size").fetchone()
    con.close()
    with open(db, "r+b") as f:  # damage the meta table's root page, not the files table
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * 64)
    with pytest.raises(KluisError) as exc:
        scratch.check_before_job(tmp_path, item_id="item1", paths=[])
    assert _code(exc) == "SalBitmapError" and str(db) in exc.value.message


def test_registration_checks_name_what_failed(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(KluisError) as exc:
        scratch.check_for_registration(tmp_path / "file" / "scratch")
    assert _code(exc) == "0x1FC07" and "cannot be created" in exc.value.message
    (tmp_path / "ok" / "tmp").mkdir(parents=True)
    (tmp_path / "ok" / "tmp").rmdir()
    (tmp_path / "ok" / "tmp").write_text("x")
    with pytest.raises(KluisError) as exc:
        scratch.check_for_registration(tmp_path / "ok")
    assert _code(exc) == "0x1FC07" and "temporary area" in exc.value.message
    scratch.check_for_registration(tmp_path / "fine")
    assert (tmp_path / "fine" / "tmp").is_dir()


def test_a_folder_on_a_fuse_file_system_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("pyfuse3", reason="pyfuse3 is installed by `make test` (extra 'mount')")
    from tests.support.faultyfs import mounted

    mnt = tmp_path / "fuse"
    mnt.mkdir()
    with mounted(mnt):
        with pytest.raises(KluisError) as info:
            scratch.check_folder(mnt, 0)
        assert _code(info) == "ScratchFolderUnsupportedFs"
        assert info.value.params["fstype"].startswith("fuse") and info.value.params["path"] == str(mnt)


def test_a_folder_on_tmpfs_is_usable_but_volatile(tmp_path: Path) -> None:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    try:
        scratch.check_folder(mnt, 0)  # jobs run; `kluis doctor` warns (tests/doctor)
        assert scratch.filesystem_type(mnt) in scratch.VOLATILE_FS
        assert scratch.filesystem_type(tmp_path) not in scratch.VOLATILE_FS | scratch.NETWORK_FS
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_source_size_counts_what_it_can_read(tmp_path: Path) -> None:
    readable = tmp_path / "a"
    readable.mkdir()
    (readable / "f").write_bytes(b"y" * 50_000)
    locked = tmp_path / "b"
    locked.mkdir()
    (locked / "g").write_bytes(b"z" * 70_000)
    locked.chmod(0)
    try:
        # As root du still reads the folder; as another user it is skipped, not fatal.
        size = scratch.SourceSize([str(readable), str(locked), str(tmp_path / "absent")])
        total = size.result(30)
        assert total is not None and total >= 50_000
        size.close()
    finally:
        locked.chmod(0o755)
    assert scratch.SourceSize([]).result(0) == 0


def test_source_size_counts_at_the_lowest_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the ETA waits for the count, so du must not take CPU from the backup beside it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "niceness"
    du = bin_dir / "du"
    # The real du, reporting the niceness it was given (setpriority may land just after exec).
    du.write_text(f'#!/bin/sh\nsleep 0.2\nnice > {seen}\nexec /usr/bin/du "$@"\n')
    du.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_bytes(b"x" * 10_000)
    size = scratch.SourceSize([str(tmp_path / "data")])
    total = size.result(30)
    assert total is not None and total >= 10_000
    assert seen.read_text().strip() == "19"


def test_a_first_backup_waits_for_the_exact_size_only_when_the_bound_does_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"x" * 10_000)
    # Pretend the sources' file system holds an exabyte: 5% of it fits on no disk here, so the
    # check waits for du, whose count (10 kB) passes the rule.
    monkeypatch.setattr(scratch, "source_used_bytes", lambda paths: 10**18)
    found = scratch.check_before_job(tmp_path, item_id="item2", paths=[str(data)])
    try:
        assert found.protected_bytes is not None and 10_000 <= found.protected_bytes < 80_000
        assert found.needed == scratch.MIN_FREE
    finally:
        assert found.checksums is not None
        found.checksums.close()
