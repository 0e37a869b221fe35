"""What only the local-directory store promises: atomic writes leave no debris."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kluis.catalog import KluisError
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


def test_a_store_that_cannot_be_a_directory_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for root, why in ((blocker, "in the way"), (blocker / "below", "Not a directory")):
        with pytest.raises(KluisError) as info:
            open_store(str(root))
        assert info.value.code == "StoreUnavailable" and why in str(info.value)
    assert blocker.read_text() == "not a directory"
