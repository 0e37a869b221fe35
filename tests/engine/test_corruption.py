"""Damaged packs, trees, indexes and points give catalog errors, never crashes or wrong bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kluis.catalog import KluisError
from kluis.engine.backup import FileBackup
from kluis.engine.format import BlobType, pack_name
from kluis.engine.repository import Repository
from kluis.engine.restore import Restorer
from kluis.engine.verify import verify
from tests.engine.helpers import PASSPHRASE, new_repo, reopen


def setup_repo(tmp_path: Path) -> tuple[Repository, Path, str]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (src / "sub" / "small.txt").write_text("small file " * 100)
    (src / "other.txt").write_text("another file " * 100)
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    return reopen(repo), src, point


def flip_byte_of(repo: Repository, blob_id: bytes, at: int = 20) -> None:
    entry = repo.index.get(blob_id)
    assert entry is not None
    path = Path(repo.store.url.removeprefix("file://")) / pack_name(entry.pack)
    data = bytearray(path.read_bytes())
    data[entry.offset + at] ^= 0xFF
    path.write_bytes(data)


def data_blob_of(repo: Repository, point: str, name: str) -> bytes:
    from kluis.engine.trees import decode_tree

    _h, manifest = repo.load_point(point)
    stack = [bytes.fromhex(manifest["root"])]
    while stack:
        for n in decode_tree(repo.load_blob(stack.pop())):
            if n.name == name:
                return n.chunk_ids()[0]
            if n.subtree:
                stack.append(bytes.fromhex(n.subtree))
    raise AssertionError(name)


def test_damaged_data_blob(tmp_path: Path) -> None:
    repo, src, point = setup_repo(tmp_path)
    flip_byte_of(repo, data_blob_of(repo, point, "big.bin"))
    result = Restorer(reopen(repo), point, tmp_path / "out").run()
    got = tmp_path / "out" / str(src).lstrip("/")
    assert not (got / "big.bin").exists()  # never silently wrong bytes
    assert (got / "other.txt").read_text() == (src / "other.txt").read_text()
    codes = {w["code"] for w in result.warnings}
    assert {"RepoBlobCorrupt", "RestoreFileFailed"} <= codes
    report = verify(reopen(repo), read_data=True)
    assert not report.ok
    assert any(p["code"] == "RepoBlobCorrupt" for p in report.problems)
    assert report.affected[point] == [f"{src}/big.bin"]
    # Structural verify alone does not read data blobs, so it does not see this one.
    assert verify(reopen(repo)).ok


def test_damaged_tree_blob(tmp_path: Path) -> None:
    repo, src, point = setup_repo(tmp_path)
    from kluis.engine.trees import decode_tree

    _h, manifest = repo.load_point(point)
    root = bytes.fromhex(manifest["root"])
    # Find the listing of "sub" and damage it.
    stack, sub_tree = [root], None
    while stack:
        for n in decode_tree(repo.load_blob(stack.pop())):
            if n.subtree:
                if n.name == "sub":
                    sub_tree = bytes.fromhex(n.subtree)
                stack.append(bytes.fromhex(n.subtree))
    assert sub_tree is not None
    flip_byte_of(repo, sub_tree, at=5)
    result = Restorer(reopen(repo), point, tmp_path / "out").run()
    assert any(w["code"] == "RepoBlobCorrupt" for w in result.warnings)
    assert (tmp_path / "out" / str(src).lstrip("/") / "big.bin").read_bytes() == (
        src / "big.bin"
    ).read_bytes()
    report = verify(reopen(repo))  # structural verify decodes every listing
    assert any(p["code"] == "RepoBlobCorrupt" for p in report.problems)
    assert any("sub" in p for p in report.affected[point])


def test_damaged_root_tree_is_an_error(tmp_path: Path) -> None:
    repo, _src, point = setup_repo(tmp_path)
    _h, manifest = repo.load_point(point)
    flip_byte_of(repo, bytes.fromhex(manifest["root"]), at=3)
    with pytest.raises(KluisError) as info:
        Restorer(reopen(repo), point, tmp_path / "out").run()
    assert info.value.code == "RepoBlobCorrupt"


def test_truncated_and_missing_packs(tmp_path: Path) -> None:
    repo, src, point = setup_repo(tmp_path)
    packs = sorted(
        Path(dirpath, f) for dirpath, _d, files in os.walk(tmp_path / "repo" / "data") for f in files
    )
    big = max(packs, key=lambda p: p.stat().st_size)
    big.write_bytes(big.read_bytes()[:1000])
    report = verify(reopen(repo), read_data=True)
    assert any(p["code"] == "RepoPackCorrupt" for p in report.problems)
    assert point in report.affected
    big.unlink()
    report = verify(reopen(repo))
    missing = [p for p in report.problems if p["code"] == "RepoPackMissing"]
    assert [p["params"]["pack"] for p in missing] == [big.name]
    assert point in report.affected  # the blobs the index placed in the lost pack count as damaged
    result = Restorer(reopen(repo), point, tmp_path / "out").run()
    assert result.warnings  # the affected files are reported, the rest restored
    assert (tmp_path / "out" / str(src).lstrip("/")).exists()


def test_damaged_index_point_and_refs(tmp_path: Path) -> None:
    repo, _src, point = setup_repo(tmp_path)
    store_root = tmp_path / "repo"
    point_file = store_root / "points" / point
    data = bytearray(point_file.read_bytes())
    data[-5] ^= 1
    point_file.write_bytes(data)
    with pytest.raises(KluisError) as info:
        reopen(repo).load_point(point)
    assert info.value.code == "RecoveryPointCorrupt"
    point_file.write_bytes(b"junk")
    with pytest.raises(KluisError) as info:
        reopen(repo).list_points()
    assert info.value.code == "RecoveryPointCorrupt"
    index_file = next((store_root / "index").iterdir())
    index_file.write_bytes(b"not an index")
    with pytest.raises(KluisError) as info:
        Repository.open(repo.store, passphrase=PASSPHRASE)
    assert info.value.code == "RepoIndexCorrupt"


def test_swapped_blobs_are_detected(tmp_path: Path) -> None:
    """Copying one blob's bytes over another's (same length) is caught by the associated data."""
    repo = new_repo(tmp_path / "repo")
    a = repo.save_blob(BlobType.DATA, b"A" * 1000 + os.urandom(10))
    b = repo.save_blob(BlobType.DATA, b"B" * 1000 + os.urandom(10))
    repo.flush()
    ea, eb = repo.index.get(a), repo.index.get(b)
    assert ea and eb and ea.pack == eb.pack and ea.length == eb.length
    path = Path(repo.store.url.removeprefix("file://")) / pack_name(ea.pack)
    data = bytearray(path.read_bytes())
    data[ea.offset : ea.offset + ea.length] = data[eb.offset : eb.offset + eb.length]
    path.write_bytes(data)
    with pytest.raises(KluisError) as info:
        reopen(repo).load_blob(a)
    assert info.value.code == "RepoBlobCorrupt"


def test_read_data_subset(tmp_path: Path) -> None:
    os.environ["KLUIS_PACK_SIZE"] = str(256 * 1024)
    try:
        src = tmp_path / "src"
        src.mkdir()
        for i in range(40):
            (src / f"f{i}").write_bytes(os.urandom(200_000))
        repo = new_repo(tmp_path / "repo")
        FileBackup(repo).run([src])
    finally:
        del os.environ["KLUIS_PACK_SIZE"]
    packs = len(list(repo.store.list("data/")))
    assert packs >= 20
    half = verify(reopen(repo), subset_percent=50)
    assert half.ok and abs(half.packs_read - packs / 2) <= 1
    full = verify(reopen(repo), read_data=True)
    assert full.ok and full.packs_read == packs and full.blobs_read >= 41
    for wrong in (0.0, -5.0, 100.5, float("nan")):
        with pytest.raises(KluisError) as info:
            verify(reopen(repo), subset_percent=wrong)
        assert info.value.code == "ValidationFailed"
