"""The file-tree corpus: preparing it, warming the page cache, the every-100th-file change, restore checks."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench_measure import run

APPEND_BYTES = b"\nkluis-bench\n"  # 13 bytes appended to every 100th file
READ_BUF = 1 << 20


@dataclass
class CorpusInfo:
    """What a corpus holds; ``files`` are regular files, relative, sorted."""

    root: Path
    files: list[str] = field(repr=False)
    bytes: int
    dirs: int
    symlinks: int

    @property
    def count(self) -> int:
        """Number of regular files."""
        return len(self.files)

    def describe(self) -> dict[str, object]:
        """For results.json."""
        return {
            "path": str(self.root),
            "files": self.count,
            "bytes": self.bytes,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
        }


def scan(root: Path) -> CorpusInfo:
    """Walk ``root`` without following symlinks."""
    files: list[str] = []
    total = dirs = links = 0
    stack = [root]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    dirs += 1
                    stack.append(Path(e.path))
                elif stat.S_ISREG(st.st_mode):
                    files.append(os.path.relpath(e.path, root))
                    total += st.st_size
                elif stat.S_ISLNK(st.st_mode):
                    links += 1
    files.sort()
    return CorpusInfo(root=root, files=files, bytes=total, dirs=dirs, symlinks=links)


def _marker(root: Path) -> Path:
    return root.with_name(root.name + ".json")


def prepare_full(root: Path, sources: Sequence[str], *, refresh: bool = False) -> CorpusInfo:
    """Copy ``sources`` into ``root`` once; reuse a complete earlier copy (same file count as recorded)."""
    journal_repair(root)
    marker = _marker(root)
    if root.exists() and marker.exists() and not refresh:
        recorded = json.loads(marker.read_text())
        info = scan(root)
        if info.count == recorded["files"]:
            print(f"corpus: reusing {root} ({info.count} files, {info.bytes / 1e9:.2f} GB)", flush=True)
            return info
        print(f"corpus: {root} has {info.count} files, {recorded['files']} recorded: copying again")
    partial = root.with_name(root.name + ".partial")
    for p in (partial, root):
        if p.exists():
            shutil.rmtree(p)
    partial.mkdir(parents=True)
    print(f"corpus: copying {' '.join(sources)} to {root} ...", flush=True)
    start = time.monotonic()
    run(["cp", "-a", *sources, str(partial)])
    partial.rename(root)
    info = scan(root)
    marker.write_text(json.dumps({**info.describe(), "sources": list(sources), "copied": time.time()}))
    print(f"corpus: {info.count} files, {info.bytes / 1e9:.2f} GB in {time.monotonic() - start:.0f} s")
    return info


def prepare_subset(full: CorpusInfo, root: Path, target_bytes: int) -> CorpusInfo:
    """A representative subset: every k-th file of the full corpus, about ``target_bytes`` in all."""
    journal_repair(root)
    marker = _marker(root)
    if root.exists() and marker.exists():
        recorded = json.loads(marker.read_text())
        info = scan(root)
        if info.count == recorded["files"] and recorded.get("target_bytes") == target_bytes:
            return info
    if root.exists():
        shutil.rmtree(root)
    step = max(1, round(full.bytes / target_bytes))
    for rel in full.files[::step]:
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(full.root / rel, dst, follow_symlinks=False)
    info = scan(root)
    marker.write_text(json.dumps({**info.describe(), "target_bytes": target_bytes, "step": step}))
    return info


def warm_up(paths: Sequence[Path], threads: int = 2) -> tuple[int, float]:
    """Read every file once (like ``cat`` > /dev/null) so each tool starts from a warm page cache."""
    local = threading.local()

    def read(p: Path) -> int:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(READ_BUF)
        n = 0
        try:
            with open(p, "rb", buffering=0) as f:
                while k := f.readinto(buf):
                    n += k
        except OSError:
            pass
        return n

    start = time.monotonic()
    todo: list[Path] = []
    for p in paths:
        if p.is_file():
            todo.append(p)
        else:
            info = scan(p)
            todo.extend(p / rel for rel in info.files)
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(read, todo, chunksize=256))
    return total, time.monotonic() - start


def _journal(root: Path) -> Path:
    return root.with_name(root.name + ".append-journal.json")


def journal_repair(root: Path, *, quiet: bool = False) -> int:
    """Undo an append step an earlier, interrupted run left behind; returns files repaired."""
    journal = _journal(root)
    if not journal.exists():
        return 0
    entries = json.loads(journal.read_text())
    for rel, size, atime_ns, mtime_ns in entries:
        p = root / rel
        if p.exists():
            os.truncate(p, size)
            os.utime(p, ns=(atime_ns, mtime_ns), follow_symlinks=False)
    journal.unlink()
    if not quiet:
        print(f"corpus: undid an interrupted append step on {len(entries)} files")
    return len(entries)


@contextmanager
def appended(info: CorpusInfo, every: int = 100) -> Iterator[dict[str, int]]:
    """Append a few bytes to every ``every``-th file; on exit, truncate back and restore mtimes.

    A journal written before the first change lets the next run undo the step after a crash.
    """
    unique: list[tuple[str, int, int, int]] = []
    inodes: set[tuple[int, int]] = set()
    for rel in info.files[::every]:
        st = os.stat(info.root / rel, follow_symlinks=False)
        # Hard-linked names share one inode: change (and later restore) each inode once.
        if (st.st_dev, st.st_ino) in inodes:
            continue
        inodes.add((st.st_dev, st.st_ino))
        unique.append((rel, st.st_size, st.st_atime_ns, st.st_mtime_ns))
    journal = _journal(info.root)
    journal.write_text(json.dumps(unique))
    os.sync()
    try:
        for rel, *_ in unique:
            with open(info.root / rel, "ab") as f:
                f.write(APPEND_BYTES)
        yield {"files": len(unique), "bytes": len(unique) * len(APPEND_BYTES)}
    finally:
        journal_repair(info.root, quiet=True)


def restored_root(target: Path, corpus_root: Path) -> Path:
    """Where a tool that keeps absolute paths (all three do, borg without the leading slash) restores to."""
    return target / corpus_root.relative_to("/")


def _digest(p: Path) -> str:
    with open(p, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def check_restore(info: CorpusInfo, restored: Path, *, sample: int = 100, seed: int = 7) -> dict[str, object]:
    """Quick completeness check: file count and bytes, plus a seeded sample compared byte for byte (hash)."""
    if not restored.is_dir():
        return {"complete": False, "reason": f"{restored} missing"}
    got = scan(restored)
    rng = random.Random(seed)
    picked = rng.sample(info.files, min(sample, info.count))
    same = 0
    for rel in picked:
        r = restored / rel
        if r.is_file() and _digest(r) == _digest(info.root / rel):
            same += 1
    complete = got.count == info.count and got.bytes == info.bytes and same == len(picked)
    return {
        "complete": complete,
        "files": got.count,
        "expected_files": info.count,
        "bytes": got.bytes,
        "expected_bytes": info.bytes,
        "sample": len(picked),
        "sample_identical": same,
    }
