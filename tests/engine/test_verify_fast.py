"""Read-data verify: listings decoded while packs are read stand in for the structural walk's own reads."""

from __future__ import annotations

import os
from pathlib import Path

from kluis.engine.backup import FileBackup
from kluis.engine.trees import decode_tree
from kluis.engine.verify import Verifier, verify
from tests.engine.helpers import new_repo, reopen
from tests.engine.test_corruption import flip_byte_of


def deep_source(root: Path) -> Path:
    src = root / "src"
    folder = src
    for depth in range(6):
        folder = folder / f"level{depth}"
        folder.mkdir(parents=True)
        for f in range(5):
            (folder / f"f{f}").write_bytes(os.urandom(3000))
    return src


def test_read_data_walks_every_listing_without_loading_it_again(tmp_path: Path) -> None:
    src = deep_source(tmp_path)
    repo = new_repo(tmp_path / "repo")
    FileBackup(repo).run([src])
    FileBackup(repo).run([src])  # a second point sharing every listing
    repo = reopen(repo)
    loads: list[bytes] = []
    original = repo.load_blob

    def counting_load(blob_id: bytes, **kw: str) -> bytes:
        loads.append(blob_id)
        return original(blob_id, **kw)

    repo.load_blob = counting_load  # type: ignore[method-assign]
    verifier = Verifier(repo, read_data=True, threads=3)
    report = verifier.run()
    assert report.ok and report.points == 2
    assert loads == []  # every listing came from the pack reads
    assert len(verifier._tree_children) >= 7


def test_damaged_listing_found_by_read_data_and_walk(tmp_path: Path) -> None:
    src = deep_source(tmp_path)
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    repo = reopen(repo)
    _h, manifest = repo.load_point(point)
    stack, victim = [bytes.fromhex(manifest["root"])], None
    while stack:
        for n in decode_tree(repo.load_blob(stack.pop())):
            if n.subtree:
                if n.name == "level3":
                    victim = bytes.fromhex(n.subtree)
                stack.append(bytes.fromhex(n.subtree))
    assert victim is not None
    flip_byte_of(repo, victim, at=7)
    for report in (verify(reopen(repo), read_data=True), verify(reopen(repo), subset_percent=100)):
        assert not report.ok
        codes = [p["code"] for p in report.problems]
        # Once from reading the pack, once from the walk that needs the listing.
        assert codes.count("RepoBlobCorrupt") == 2
        assert any("level3" in p for p in report.affected[point])
