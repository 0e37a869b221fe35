"""The checksum store's shortcuts: unchanged files, their xattrs, and whole unchanged folders.

Every test changes something a shortcut could miss and checks that the new recovery
point carries it, byte for byte after a restore, while what did not change is reused.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

from kluis.engine.backup import BackupOptions, FileBackup, file_node
from kluis.engine.checksum_store import ChecksumStore
from kluis.engine.metadata import node_from_stat
from kluis.engine.repository import Repository
from kluis.engine.restore import Restorer
from kluis.engine.trees import Node, decode_tree
from tests.engine.helpers import new_repo, reopen, snapshot_tree


def make_tree(root: Path) -> Path:
    """Three levels of folders with a few files each."""
    src = root / "src"
    for a in ("a", "b"):
        for b in ("x", "y"):
            d = src / a / b
            d.mkdir(parents=True)
            for i in range(3):
                (d / f"f{i}.txt").write_text(f"{a}/{b}/{i}\n" * 50)
        (src / a / "top.txt").write_text(a * 100)
    (src / "root.txt").write_text("root")
    return src


def trees(repo: Repository, point_id: str, src: Path) -> dict[str, bytes]:
    """Tree id of every folder below ``src`` in a point, by path relative to ``src``."""
    _, manifest = repo.load_point(point_id)
    tree = bytes.fromhex(manifest["root"])
    for part in str(src).strip("/").split("/"):
        node = next(n for n in decode_tree(repo.load_blob(tree)) if n.name == part)
        assert node.subtree is not None
        tree = bytes.fromhex(node.subtree)
    out: dict[str, bytes] = {".": tree}
    stack = [(".", tree)]
    while stack:
        rel, tid = stack.pop()
        for n in decode_tree(repo.load_blob(tid)):
            if n.subtree:
                child = n.name if rel == "." else f"{rel}/{n.name}"
                out[child] = bytes.fromhex(n.subtree)
                stack.append((child, bytes.fromhex(n.subtree)))
    return out


def node_at(repo: Repository, point_id: str, src: Path, rel: str) -> Node:
    """The node of ``src/rel`` in a point."""
    folder, _, name = rel.rpartition("/")
    tid = trees(repo, point_id, src)[folder or "."]
    return next(n for n in decode_tree(repo.load_blob(tid)) if n.name == name)


def restored(repo: Repository, point_id: str, src: Path, out: Path) -> dict[str, tuple[object, ...]]:
    Restorer(reopen(repo), point_id, out).run()
    return snapshot_tree(out / str(src).lstrip("/"))


def bump(path: Path) -> None:
    """Let the clock move on so a change gets a new ctime even on coarse file systems."""
    time.sleep(0.01)


def test_unchanged_tree_is_reused_whole(tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    repo = new_repo(tmp_path / "repo")
    cache = ChecksumStore(tmp_path / "cs.db")
    first = FileBackup(repo, checksum_store=cache).run([src])
    second = FileBackup(repo, checksum_store=cache).run([src])
    assert second.files_read == 0 and second.stored_bytes == 0
    assert (second.files, second.dirs, second.bytes) == (first.files, first.dirs, first.bytes)
    assert trees(repo, first.point_id, src) == trees(repo, second.point_id, src)
    assert set(repo.load_refs(first.point_id)) == set(repo.load_refs(second.point_id))


def test_deep_change_rebuilds_ancestors_and_reuses_siblings(tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    repo = new_repo(tmp_path / "repo")
    cache = ChecksumStore(tmp_path / "cs.db")
    first = FileBackup(repo, checksum_store=cache).run([src])
    before = trees(repo, first.point_id, src)
    bump(src)
    with open(src / "a" / "x" / "f1.txt", "a") as f:
        f.write("more\n")
    second = FileBackup(repo, checksum_store=cache).run([src])
    assert second.files_read == 1
    after = trees(repo, second.point_id, src)
    for changed in (".", "a", "a/x"):
        assert before[changed] != after[changed], changed
    for same in ("a/y", "b", "b/x", "b/y"):
        assert before[same] == after[same], same
    assert restored(repo, second.point_id, src, tmp_path / "out") == snapshot_tree(src)
    # The rebuilt folders were remembered: a third run reuses everything.
    third = FileBackup(repo, checksum_store=cache).run([src])
    assert third.files_read == 0 and trees(repo, third.point_id, src) == after


def test_xattr_and_mode_changes_are_not_missed(tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    os.setxattr(src / "b" / "y" / "f2.txt", "user.colour", b"blue")
    repo = new_repo(tmp_path / "repo")
    cache = ChecksumStore(tmp_path / "cs.db")
    first = FileBackup(repo, checksum_store=cache).run([src])
    assert node_at(repo, first.point_id, src, "b/y/f2.txt").xattrs is not None
    bump(src)
    os.setxattr(src / "b" / "y" / "f2.txt", "user.colour", b"green")
    os.setxattr(src / "a" / "x" / "f0.txt", "user.new", b"1")
    os.chmod(src / "b" / "x", 0o700)
    subprocess.run(["setfacl", "-m", "u:1234:r", str(src / "a" / "y" / "f1.txt")], check=True)
    second = FileBackup(repo, checksum_store=cache).run([src])
    # Metadata changes need no reading of data, but every one of them is in the point.
    assert second.new_bytes == 0
    assert restored(repo, second.point_id, src, tmp_path / "out") == snapshot_tree(src)
    assert node_at(repo, second.point_id, src, "b/x").mode == 0o700
    # And the first point still has the old metadata.
    old = restored(repo, first.point_id, src, tmp_path / "out-old")
    assert old["b/y/f2.txt"][6] == (("user.colour", b"blue"),)
    assert old["a/x/f0.txt"][6] == ()


def test_new_deleted_and_renamed_entries(tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    repo = new_repo(tmp_path / "repo")
    cache = ChecksumStore(tmp_path / "cs.db")
    FileBackup(repo, checksum_store=cache).run([src])
    (src / "a" / "y" / "f0.txt").unlink()
    os.rename(src / "b" / "x" / "f1.txt", src / "b" / "x" / "g1.txt")
    (src / "b" / "y" / "new").mkdir()
    os.symlink("../x", src / "b" / "y" / "new" / "link")
    second = FileBackup(repo, checksum_store=cache).run([src])
    assert second.files_read == 1 and second.new_bytes == 0  # the renamed file: read, not stored
    assert restored(repo, second.point_id, src, tmp_path / "out") == snapshot_tree(src)


def test_exclusion_changes_between_runs(tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    repo = new_repo(tmp_path / "repo")
    cache = ChecksumStore(tmp_path / "cs.db")
    FileBackup(repo, checksum_store=cache).run([src])
    second = FileBackup(repo, checksum_store=cache, options=BackupOptions(excludes=["f1.txt"])).run([src])
    assert not any(n.endswith("f1.txt") for n in restored(repo, second.point_id, src, tmp_path / "o2"))
    third = FileBackup(repo, checksum_store=cache).run([src])
    assert restored(repo, third.point_id, src, tmp_path / "o3") == snapshot_tree(src)


def test_store_of_another_repository_is_harmless(tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    cache = ChecksumStore(tmp_path / "cs.db")
    FileBackup(new_repo(tmp_path / "repo1"), checksum_store=cache).run([src])
    # Same store, new repository: none of the remembered trees or chunks exist there.
    repo2 = new_repo(tmp_path / "repo2")
    result = FileBackup(repo2, checksum_store=cache).run([src])
    assert result.files_read == result.files
    assert restored(repo2, result.point_id, src, tmp_path / "out") == snapshot_tree(src)


def test_lost_file_rows_are_read_again_when_a_folder_is_rebuilt(tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    repo = new_repo(tmp_path / "repo")
    db = tmp_path / "cs.db"
    cache = ChecksumStore(db)
    FileBackup(repo, checksum_store=cache).run([src])
    cache.close()
    # Folder rows survive, file rows of src/a are gone; then a change below src/a forces
    # src/a to be rebuilt from what was listed.
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM files WHERE dir = ?", (os.fsencode(src / "a"),))
    bump(src)
    (src / "a" / "x" / "f2.txt").write_text("changed")
    cache = ChecksumStore(db)
    second = FileBackup(repo, checksum_store=cache).run([src])
    assert second.files_read == 2  # the changed file and src/a/top.txt
    assert restored(repo, second.point_id, src, tmp_path / "out") == snapshot_tree(src)


def test_hard_links_still_link_on_unchanged_runs(tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    os.link(src / "a" / "x" / "f0.txt", src / "b" / "y" / "linked")
    repo = new_repo(tmp_path / "repo")
    cache = ChecksumStore(tmp_path / "cs.db")
    FileBackup(repo, checksum_store=cache).run([src])
    second = FileBackup(repo, checksum_store=cache).run([src])
    assert second.files_read == 0
    out = tmp_path / "out"
    got = restored(repo, second.point_id, src, out)
    assert got == snapshot_tree(src)
    base = out / str(src).lstrip("/")
    assert os.stat(base / "b" / "y" / "linked").st_ino == os.stat(base / "a" / "x" / "f0.txt").st_ino


def test_file_node_matches_node_from_stat(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    os.setxattr(f, "user.k", b"v")
    os.chmod(f, 0o4751)
    st = os.lstat(f)
    full = node_from_stat("f", st, "file", os.fsencode(f))
    assert file_node("f", st, full.xattrs) == full


def test_single_file_sources_use_the_store(tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    one = src / "a" / "top.txt"
    repo = new_repo(tmp_path / "repo")
    cache = ChecksumStore(tmp_path / "cs.db")
    first = FileBackup(repo, checksum_store=cache).run([one, src / "b"])
    second = FileBackup(repo, checksum_store=cache).run([one, src / "b"])
    assert first.files_read == 8 and second.files_read == 0
    out = tmp_path / "out"
    Restorer(reopen(repo), second.point_id, out).run()
    assert (out / str(one).lstrip("/")).read_bytes() == one.read_bytes()
    assert snapshot_tree(out / str(src / "b").lstrip("/")) == snapshot_tree(src / "b")


def test_nonces_differ_and_blobs_decode(tmp_path: Path) -> None:
    from kluis.engine.blobs import BlobCodec
    from kluis.engine.format import NONCE_SIZE, BlobType

    repo = new_repo(tmp_path / "repo")
    codec = BlobCodec(repo.keys)
    data = b"same plaintext" * 100
    blob_id = codec.chunk_id(data)
    encoded = [codec.encode(blob_id, BlobType.DATA, data) for _ in range(3)]
    nonces = {blob[:NONCE_SIZE] for blob, _ in encoded}
    assert len(nonces) == 3
    for blob, flags in encoded:
        assert BlobCodec(repo.keys).decode(blob_id, BlobType.DATA, flags, blob, len(data)) == data


def test_recreated_protected_folder_is_a_warning(tmp_path: Path) -> None:
    """A protected folder deleted and made again is read in full and says so; then quiet."""
    repo = new_repo(tmp_path / "repo")
    src = make_tree(tmp_path)
    cache = ChecksumStore(tmp_path / "cache.db")
    first = FileBackup(repo, checksum_store=cache).run([src])
    assert first.status == "completed"
    expected = snapshot_tree(src)
    moved = tmp_path / "moved"
    subprocess.run(["cp", "-a", str(src), str(moved)], check=True)
    subprocess.run(["rm", "-rf", str(src)], check=True)
    os.rename(moved, src)  # same path, same content, a new folder (new inode)
    second = FileBackup(repo, checksum_store=cache, failed_log=tmp_path / "failed.log").run([src])
    assert second.status == "completed_with_warnings" and second.warnings == 1
    assert second.files_read == first.files_read and second.stored_bytes < first.stored_bytes
    assert [w["code"] for w in second.first_warnings] == ["ProtectedFolderRecreated"]
    assert "ProtectedFolderRecreated" in (tmp_path / "failed.log").read_text()
    assert restored(repo, second.point_id, src, tmp_path / "out") == expected
    third = FileBackup(repo, checksum_store=cache).run([src])
    assert third.status == "completed" and third.files_read == 0
