"""The seeds' four per-file conditions met for real on a FUSE file system that fails on purpose."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kluis.engine.backup import FileBackup
from kluis.engine.restore import Restorer
from tests.engine.helpers import new_repo, reopen

pytest.importorskip("pyfuse3", reason="pyfuse3 is installed by `make test` (extra 'mount')")


@pytest.fixture
def faulty_mount(tmp_path: Path) -> Iterator[Path]:
    from tests.support.faultyfs import mounted

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted(mnt):
        yield mnt


def test_each_failing_file_is_skipped_with_its_code(tmp_path: Path, faulty_mount: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    log = tmp_path / "scratch" / "failed-files.log"
    result = FileBackup(repo, failed_log=log).run([faulty_mount])
    assert result.status == "completed_with_warnings"
    entries = {Path(e["path"]).name: e["code"] for e in map(json.loads, log.read_text().splitlines())}
    assert entries == {
        "eio.bin": "0x80070570",  # damaged and unreadable
        "offline.bin": "0x8007018b",  # online-only / network file not available
        "denied.txt": "0x80070005",  # access denied
        "gone.txt": "0x80070002",  # not found
        "badlink": "0x80070570",  # a symbolic link whose target cannot be read
    }
    assert result.warnings == 5 and result.failed_files_log == str(log)
    # The readable file is in the recovery point; the failed ones are not, and nothing is half-written.
    out = tmp_path / "out"
    Restorer(reopen(repo), result.point_id, out).run()
    restored = out / str(faulty_mount).lstrip("/")
    assert sorted(os.listdir(restored)) == ["good.txt"]
    assert (restored / "good.txt").read_bytes() == b"this file reads fine\n" * 100
