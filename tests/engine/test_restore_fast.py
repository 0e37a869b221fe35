"""Fast restore paths: direct creation, conflicts met at creation, metadata on descriptors, segments."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from kluis.engine.backup import FileBackup
from kluis.engine.format import pack_name
from kluis.engine.restore import RestoreOptions, Restorer
from kluis.engine.restore_io import SegmentReader
from tests.engine.helpers import new_repo, reopen, snapshot_tree


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


def test_segment_reader_matches_direct_reads_under_concurrency(tmp_path: Path) -> None:
    src = many_files(tmp_path)
    repo = new_repo(tmp_path / "repo")
    FileBackup(repo).run([src])
    repo = reopen(repo)
    entries = list(repo.index.entries())
    reader = SegmentReader(repo.store, segment=256 * 1024, keep=3)
    failures: list[str] = []

    def worker(seed: int) -> None:
        order = list(entries)
        random.Random(seed).shuffle(order[: len(order) // 2])  # half random, half in pack order
        for e in order:
            want = repo.store.get(pack_name(e.pack), e.offset, e.length)
            if bytes(reader.read(e)) != want:
                failures.append(e.id.hex())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader.close()
    assert not failures


class _CountingStore:
    """Passes reads through to a store and remembers each (pack, offset, length)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data: bytes = self.inner.get(name, offset, length)
        with self.lock:
            self.reads.append((name, offset, len(data)))
        return data


def test_segment_reader_reads_ahead_and_never_reads_a_byte_twice_in_order(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    for i in range(400):  # small files: many blobs per segment, borders fall inside blobs
        (src / f"f{i}").write_bytes(rng.randbytes(rng.randint(1_000, 40_000)))
    repo = new_repo(tmp_path / "repo")
    FileBackup(repo).run([src])
    repo = reopen(repo)
    entries = sorted(repo.index.entries(), key=lambda e: (e.pack, e.offset))
    store = _CountingStore(repo.store)
    reader = SegmentReader(store, segment=128 * 1024, keep=4)  # type: ignore[arg-type]
    try:
        for e in entries:
            assert bytes(reader.read(e)) == repo.store.get(pack_name(e.pack), e.offset, e.length)
    finally:
        reader.close()
    packs = {e.pack for e in entries}
    read = sum(n for _, _, n in store.reads)
    blob_bytes = sum(e.length for e in entries)
    # In pack order every byte is read once: segments follow each other (read ahead), blobs on
    # a border are joined from both sides. Past each pack's blobs only its table is read extra.
    assert blob_bytes <= read <= blob_bytes + len(packs) * 128 * 1024
    by_pack: dict[str, list[tuple[int, int]]] = {}
    for name, offset, n in store.reads:
        by_pack.setdefault(name, []).append((offset, n))
    for spans in by_pack.values():
        spans.sort()
        for (a, n), (b, _) in itertools.pairwise(spans):
            assert a + n <= b, "overlapping reads"
        # After the first read, the rest came from the read-ahead: back to back.
        assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
