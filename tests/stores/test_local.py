"""What only the local-directory store promises: atomic writes leave no debris."""

from __future__ import annotations

import os
from pathlib import Path

from kluis.stores import LocalStore, open_store


def test_tmp_files_are_invisible(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".tmp-deadbeef").write_bytes(b"half written")
    store.put("data/real", b"x")
    assert [o.name for o in store.list("")] == ["data/real"]


def test_written_file_mode_is_private(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b", b"secret-ish")
    assert (os.stat(tmp_path / "a" / "b").st_mode & 0o777) == 0o600


def test_open_store_paths(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "s")), LocalStore)
    s = open_store(f"file://{tmp_path}/t")
    assert isinstance(s, LocalStore)
    s.put("x", b"1")
    assert (tmp_path / "t" / "x").read_bytes() == b"1"
