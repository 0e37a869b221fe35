"""Restores of hostile recovery points write nothing outside the target; the store holds no plaintext."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from kluis.engine.backup import FileBackup
from kluis.engine.format import BlobType
from kluis.engine.repository import Repository
from kluis.engine.restore import RestoreOptions, Restorer
from kluis.engine.trees import Node, encode_tree
from tests.engine.helpers import folders_of_random_files, new_repo, reopen


def forge_point(repo: Repository, nodes: list[Node]) -> str:
    """A recovery point whose root listing is exactly ``nodes`` (order kept, duplicates allowed)."""
    refs: set[bytes] = set()
    for n in nodes:
        refs.update(n.chunk_ids())
        if n.subtree:
            refs.add(bytes.fromhex(n.subtree))
    import json

    raw = json.dumps({"v": 1, "nodes": [n.to_json() for n in nodes]}, separators=(",", ":")).encode()
    root = repo.save_blob(BlobType.TREE, raw)
    refs.add(root)
    return repo.save_point("files", {"type": "files", "root": root.hex()}, refs)


def file_node(repo: Repository, name: str, data: bytes) -> Node:
    blob = repo.save_blob(BlobType.DATA, data)
    return Node(name=name, type="file", mode=0o644, size=len(data), content=[blob.hex()])


def tree_node(repo: Repository, name: str, children: list[Node]) -> Node:
    sub = repo.save_blob(BlobType.TREE, encode_tree(children))
    return Node(name=name, type="dir", mode=0o755, subtree=sub.hex())


def all_files(root: Path) -> set[str]:
    return {str(Path(d) / f) for d, dirs, files in os.walk(root) for f in files + dirs}


@pytest.mark.parametrize("conflict", ["overwrite", "skip", "copy"])
def test_hostile_names_and_symlink_tricks(tmp_path: Path, conflict: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    target = tmp_path / "sandbox" / "target"
    target.mkdir(parents=True)
    repo = new_repo(tmp_path / "repo")
    payload = b"attacker data"
    nodes = [
        file_node(repo, "../escape", payload),
        file_node(repo, "/etc/evil", payload),
        file_node(repo, "a/b", payload),
        file_node(repo, "..", payload),
        file_node(repo, ".", payload),
        file_node(repo, "", payload),
        file_node(repo, "nul\x00byte", payload),
        tree_node(repo, "..", [file_node(repo, "x", payload)]),
        # A symlink pointing outside, then a directory of the same name with a file inside.
        Node(name="link", type="symlink", target=str(outside)),
        tree_node(repo, "link", [file_node(repo, "pwned", payload)]),
        # A symlink to an outside file, then a file of the same name: must replace the link, not follow it.
        Node(name="link2", type="symlink", target=str(outside / "victim")),
        file_node(repo, "link2", payload),
        # A hard link whose target climbs out of the point.
        Node(
            name="hl",
            type="hardlink",
            target="../../outside/victim",
            size=len(payload),
            content=[repo.save_blob(BlobType.DATA, payload).hex()],
        ),
        file_node(repo, "fine.txt", b"ok"),
    ]
    point = forge_point(repo, nodes)
    result = Restorer(reopen(repo), point, target, options=RestoreOptions(conflict=conflict)).run()
    assert (outside / "victim").read_text() == "original"
    assert sorted(os.listdir(outside)) == ["victim"]
    assert sorted(os.listdir(tmp_path / "sandbox")) == ["target"]
    assert not (tmp_path / "escape").exists() and not Path("/etc/evil").exists()
    assert (target / "fine.txt").read_text() == "ok"
    codes = [w["code"] for w in result.warnings]
    assert codes.count("RestoreUnsafePath") >= 7
    for path in all_files(target):
        if not os.path.islink(path):  # links may point anywhere; they are never written through
            assert os.path.realpath(path).startswith(str(target))


def test_symlink_swapped_in_during_restore(tmp_path: Path) -> None:
    """Another process keeps replacing restored directories with links to outside; nothing leaks."""
    src = tmp_path / "src"
    folders_of_random_files(src, 30, 40, 2000)
    repo = new_repo(tmp_path / "repo")
    point = FileBackup(repo).run([src]).point_id
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    base = target / str(src).lstrip("/")
    stop = threading.Event()
    swaps = 0

    def attacker() -> None:
        nonlocal swaps
        while not stop.is_set():
            for d in range(30):
                victim = base / f"d{d}"
                try:
                    os.rename(victim, base / f"moved{d}-{swaps}")
                    os.symlink(outside, victim)
                    swaps += 1
                except OSError:
                    pass
            time.sleep(0.0005)

    thread = threading.Thread(target=attacker)
    thread.start()
    try:
        for _ in range(3):
            Restorer(reopen(repo), point, target, options=RestoreOptions(threads=2)).run()
    finally:
        stop.set()
        thread.join()
    assert os.listdir(outside) == []
    assert swaps > 0  # the race really happened


def test_store_holds_no_plaintext(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "folder-named-kluiscanaryfolder").mkdir(parents=True)
    secret_name = "kluiscanaryname.txt"
    secret_text = b"kluiscanarycontent " * 50
    (src / "folder-named-kluiscanaryfolder" / secret_name).write_bytes(secret_text)
    (src / "small").write_bytes(b"kluiscanarysmall")
    os.setxattr(src / "small", "user.kluiscanaryxattr", b"kluiscanaryvalue")
    os.symlink("kluiscanarylinktarget", src / "link")
    repo = new_repo(tmp_path / "repo")
    FileBackup(repo).run([src])
    for dirpath, _dirs, files in os.walk(tmp_path / "repo"):
        for f in files:
            data = (Path(dirpath) / f).read_bytes()
            assert b"kluiscanary" not in data, f"plaintext in {f}"
            assert b"src" not in Path(dirpath, f).name.encode()
