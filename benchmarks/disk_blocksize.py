"""Choose the disk-image block size (and the block-map segment size) by measuring.

Scenario (issue 2, "Disk image"): a 4 GiB ext4 image filled with ~3.5 GB of
/usr/lib and /usr/share files; back it up; rewrite 1% of its 4 KiB blocks at
random offsets with random data (seeded); back up again. For each block size
the second backup's bytes added to the repository (everything it wrote: packs,
index, refs, point), its time, and the block map's size are reported. The
target is <= 0.2 x restic's +888 MB (benchmarks/../shared/ANCHORS.md), so
<= ~178 MB.

The segment size of the block map is chosen from the same images: for several
segment sizes N, the map bytes a second backup adds are computed from the real
block maps (segments compressed as the blob codec would), for the 1% scenario
and for a "daily few changes" scenario, and extrapolated to a 1 TiB disk.

Needs root (loop mount). Generated data lives under /work/bench-data/disk and is
deleted at the end (``--keep`` keeps it). Run::

    .venv/bin/python benchmarks/disk_blocksize.py [--repeat 3] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zstandard

os.environ.setdefault("KLUIS_FAST_KDF", "1")  # the KDF is not what is measured

from kluis.engine.blobs import compression_level
from kluis.engine.blockmap import DEFAULT_BLOCK_SIZE, DEFAULT_SEGMENT_ENTRIES, decode_segment, disks_of
from kluis.engine.disk import DiskBackup
from kluis.engine.format import ID_SIZE
from kluis.engine.repository import Repository
from kluis.stores import LocalStore

DATA = Path("/work/bench-data/disk")
IMAGE_SIZE = 4 * 1024**3
FILL_BYTES = 3_500_000_000
SOURCES = ("/usr/lib", "/usr/share")
BLOCK_SIZES = (16 * 1024, 32 * 1024, 64 * 1024, 128 * 1024)
SEGMENT_SIZES = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
RESTIC_ADDED = 888_000_000  # ANCHORS.md, same scenario, same kind of machine
TARGET = 0.2 * RESTIC_ADDED
SEED = 20260401
PAGE = 4096
RESULTS = Path(__file__).with_name("RESULTS-disk-blocksize.md")


def sh(*cmd: str) -> str:
    """Run a command, return its stdout."""
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def tree_bytes(path: Path) -> int:
    """Sum of file sizes under ``path`` (what a store holds)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def fill(mnt: Path, budget: int) -> tuple[int, int]:
    """Copy regular files from SOURCES into ``mnt`` in sorted order until ``budget`` bytes."""
    copied = files = 0
    for src in SOURCES:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel = os.path.relpath(dirpath, "/")
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                if copied + st.st_size > budget:
                    return copied, files
                dest = mnt / rel / name
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, dest)
                except OSError:
                    continue  # unreadable source, or the file system is full: keep going/stop below
                copied += st.st_size
                files += 1
                if files % 2000 == 0 and shutil.disk_usage(mnt).free < 200 * 1024 * 1024:
                    return copied, files
    return copied, files


def make_images() -> tuple[Path, Path, list[int], dict[str, Any]]:
    """The filled base image and a copy with 1% of its 4 KiB pages rewritten."""
    DATA.mkdir(parents=True, exist_ok=True)
    base = DATA / "base.img"
    mnt = DATA / "mnt"
    mnt.mkdir(exist_ok=True)
    with open(base, "wb") as f:
        f.truncate(IMAGE_SIZE)
    sh("mkfs.ext4", "-q", "-F", str(base))
    sh("mount", "-o", "loop", str(base), str(mnt))
    try:
        started = time.monotonic()
        copied, files = fill(mnt, FILL_BYTES)
        used = shutil.disk_usage(mnt).used
        fill_s = time.monotonic() - started
    finally:
        subprocess.run(["sync"], check=False)
        sh("umount", str(mnt))
    changed = DATA / "changed.img"
    sh("cp", "--sparse=always", str(base), str(changed))
    rng = random.Random(SEED)
    pages = IMAGE_SIZE // PAGE
    chosen = sorted(rng.sample(range(pages), pages // 100))
    fd = os.open(changed, os.O_WRONLY)
    try:
        for p in chosen:
            os.pwrite(fd, rng.randbytes(PAGE), p * PAGE)
        os.fsync(fd)
    finally:
        os.close(fd)
    info = {"files": files, "file_bytes": copied, "fs_used": used, "fill_seconds": round(fill_s, 1)}
    return base, changed, chosen, info


def full_map(repo: Repository, point_id: str) -> tuple[bytes, int]:
    """The whole block map of a point's only disk, and the point file's size."""
    _h, manifest = repo.load_point(point_id)
    (disk,) = disks_of(point_id, manifest)
    raw = b"".join(
        decode_segment(repo.load_blob(s), where="bench", expected=disk.segment_count(i))
        for i, s in enumerate(disk.segments)
    )
    return raw, repo.store.stat(f"points/{point_id}").size


def run_block_size(bs: int, base: Path, changed: Path, chosen: list[int]) -> dict[str, Any]:
    """First and second backup at one block size, in a fresh repository."""
    repo_dir = DATA / f"repo-{bs // 1024}k"
    shutil.rmtree(repo_dir, ignore_errors=True)
    repo, _w, _k = Repository.init(LocalStore(repo_dir), "bench passphrase")
    first = DiskBackup(repo, base, name="disk", block_size=bs).run()
    size_first = tree_bytes(repo_dir)
    # The changed-block path measured on a copy of the repository as it was after the first backup.
    cbt_dir = DATA / f"repo-{bs // 1024}k-cbt"
    shutil.rmtree(cbt_dir, ignore_errors=True)
    shutil.copytree(repo_dir, cbt_dir)
    second = DiskBackup(repo, changed, name="disk", block_size=bs, previous_point=first.point_id).run()
    size_second = tree_bytes(repo_dir)
    map_first, point_first = full_map(repo, first.point_id)
    map_second, point_second = full_map(repo, second.point_id)
    cbt_repo = Repository.open(LocalStore(cbt_dir), passphrase="bench passphrase")
    cbt = DiskBackup(
        cbt_repo,
        changed,
        name="disk",
        block_size=bs,
        previous_point=first.point_id,
        changed_extents=[(p * PAGE, PAGE) for p in chosen],
    ).run()
    cbt_added = tree_bytes(cbt_dir) - size_first
    shutil.rmtree(cbt_dir)
    shutil.rmtree(repo_dir)
    return {
        "block_size": bs,
        "first_seconds": first.seconds,
        "first_repo_bytes": size_first,
        "first_stored_blocks": first.blocks_stored,
        "second_seconds": second.seconds,
        "second_added": size_second - size_first,
        "second_blocks_stored": second.blocks_stored,
        "second_map_added": second.map_stored_bytes,
        "cbt_seconds": cbt.seconds,
        "cbt_blocks_read": cbt.blocks_read,
        "cbt_added": cbt_added,
        "map_entries": len(map_first) // ID_SIZE,
        "map_segments_bytes": first.map_stored_bytes,
        "point_file_bytes": point_first,
        "point_file_bytes_second": point_second,
        "_maps": (map_first, map_second),
    }


def segment_cost(seg: bytes, cctx: zstandard.ZstdCompressor) -> int:
    """Stored bytes of one segment blob, compressed as the codec would (>= 3% saving)."""
    plain = len(seg) + 12
    packed = len(cctx.compress(seg))
    body = packed if packed <= plain * 0.97 else plain
    return body + 28 + 44  # nonce + tag, pack table entry


def segment_table(maps: tuple[bytes, bytes], bs: int) -> list[dict[str, Any]]:
    """Map bytes a second backup adds, per segment size N, in three scenarios."""
    old, new = maps
    entries = len(old) // ID_SIZE
    changed_1pct = {
        i
        for i in range(entries)
        if old[i * ID_SIZE : (i + 1) * ID_SIZE] != new[i * ID_SIZE : (i + 1) * ID_SIZE]
    }
    rng = random.Random(SEED + 1)
    # A day on a quiet server: 200 scattered 4 KiB writes (metadata, logs) and 64 MiB of one new file.
    few = {rng.randrange(entries) for _ in range(200)}
    run_start = rng.randrange(entries - (64 << 20) // bs)
    few |= set(range(run_start, run_start + (64 << 20) // bs))
    cctx = zstandard.ZstdCompressor(level=3)
    out = []
    tib_entries = 1024**4 // bs
    for n in SEGMENT_SIZES:
        segs = -(-entries // n)
        costs = [segment_cost(new[i * n * ID_SIZE : (i + 1) * n * ID_SIZE], cctx) for i in range(segs)]
        # The manifest lists segment ids as hex in JSON and is stored zstd-compressed.
        ids = [os.urandom(ID_SIZE).hex() for _ in range(segs)]
        manifest = len(cctx.compress(json.dumps(ids).encode()))
        per_segment = manifest / segs
        touched_1pct = {i // n for i in changed_1pct}
        touched_few = {i // n for i in few}
        # 1 TiB disk, same daily change: 200 scattered segments plus the run's, incompressible ids.
        tib_segs = -(-tib_entries // n)
        tib_touched = min(tib_segs, 200 + (64 << 20) // bs // n + 1)
        out.append(
            {
                "n": n,
                "segment_kib": n * ID_SIZE / 1024,
                "full_map": sum(costs) + manifest,
                "added_1pct": sum(costs[i] for i in touched_1pct) + manifest,
                "added_few": sum(costs[i] for i in touched_few) + manifest,
                "tib_manifest": tib_segs * per_segment,
                "tib_added_few": tib_touched * (n * ID_SIZE + 84) + tib_segs * per_segment,
            }
        )
    return out


def machine() -> str:
    """nproc, free, CPU and kernel, as the results file records them."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in sh("lscpu").splitlines() if "Model name" in ln), "?")
    return (
        f"nproc: {sh('nproc').strip()}; CPU: {cpu}; kernel {os.uname().release}\n\n"
        f"```\n$ free -m\n{sh('free', '-m').rstrip()}\n```"
    )


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def render(
    rows: list[dict[str, Any]], segs: list[dict[str, Any]], info: dict[str, Any], chosen: int, repeat: int
) -> str:
    """The results as Markdown."""
    lines = [
        "# Disk-image block size",
        "",
        f"Produced by `benchmarks/disk_blocksize.py --repeat {repeat}` (medians of {repeat} runs;"
        " bytes do not vary).",
        "",
        "## Machine",
        "",
        machine(),
        "",
        "## Data",
        "",
        f"4 GiB ext4 image (mkfs.ext4 on a sparse file, loop-mounted), {info['files']:,} files from"
        f" /usr/lib and /usr/share, {mb(info['file_bytes'])} MB of file data ({mb(info['fs_used'])} MB used"
        f" in the file system). Then {chosen:,} random 4 KiB pages (1%, seed {SEED}) rewritten with random"
        f" data. Kluis: zstd-{compression_level()}, AES-256-GCM, 2 threads, local store; images in the"
        " page cache.",
        "",
        "## Second backup after 1% random 4 KiB writes",
        "",
        f"Target: bytes added <= 0.2 x restic's +888 MB = {mb(TARGET)} MB (restic took 16.9 s).",
        "",
        "| block size | bytes added (MB) | vs restic | blocks stored | time (s) | time with changed"
        " extents (s) | first backup (s) | first backup repo (MB) | map entries | map segments (KB) |"
        " point file (KB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['block_size'] // 1024} KiB | {mb(r['second_added'])}"
            f" | {r['second_added'] / RESTIC_ADDED:.3f}x"
            f" | {r['second_blocks_stored']:,} | {r['second_seconds']:.1f} | {r['cbt_seconds']:.1f}"
            f" | {r['first_seconds']:.1f} | {mb(r['first_repo_bytes'])} | {r['map_entries']:,}"
            f" | {r['map_segments_bytes'] / 1e3:,.0f} | {r['point_file_bytes'] / 1e3:,.1f} |"
        )
    lines += [
        "",
        "## Block-map segment size (at the chosen block size)",
        "",
        "Map bytes a backup adds: changed segments (compressed as the codec does, with blob and table"
        " overhead) plus the manifest's list of segment ids (hex in JSON, zstd: about 37 bytes each)."
        ' "Few changes": 200 scattered 4 KiB writes and one 64 MiB run. The 1 TiB columns extrapolate'
        " the few-changes day to a 1 TiB disk (incompressible segments).",
        "",
        "| entries per segment | segment (KiB) | full map (KB) | added, 1% random (KB) | added, few changes"
        " (KB) | 1 TiB: manifest list (KB) | 1 TiB: added, few changes (KB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in segs:
        lines.append(
            f"| {s['n']} | {s['segment_kib']:g} | {s['full_map'] / 1e3:,.0f} | {s['added_1pct'] / 1e3:,.0f}"
            f" | {s['added_few'] / 1e3:,.0f} | {s['tib_manifest'] / 1e3:,.0f}"
            f" | {s['tib_added_few'] / 1e3:,.0f} |"
        )
    lines += ["", "## Choice", "", *choice(rows, segs)]
    return "\n".join(lines) + "\n"


def choice(rows: list[dict[str, Any]], segs: list[dict[str, Any]]) -> list[str]:
    """The defaults the figures support, and whether the code uses them."""
    meeting = [r for r in rows if r["second_added"] <= TARGET]
    out = []
    if meeting:
        best = max(meeting, key=lambda r: r["block_size"])
        kib = best["block_size"] // 1024
        out.append(
            f"Block size: the largest that meets the target is {kib} KiB ({mb(best['second_added'])} MB,"
            f" {best['second_added'] / RESTIC_ADDED:.3f}x restic). Smaller blocks store less after"
            " scattered writes but double the map, the index entries and the per-block work with each"
            " halving; larger ones miss the target. The code's default (blockmap.DEFAULT_BLOCK_SIZE) is"
            f" {DEFAULT_BLOCK_SIZE // 1024} KiB"
            + ("." if best["block_size"] == DEFAULT_BLOCK_SIZE else f": it should be changed to {kib} KiB.")
        )
    else:
        out.append("No block size met the target in this run.")
    if segs:
        low = min(segs, key=lambda s: s["tib_added_few"])
        cur = next((s for s in segs if s["n"] == DEFAULT_SEGMENT_ENTRIES), None)
        text = (
            f"Segment size: after 1% random writes every segment changes at any N. On a few-changes day of a"
            f" 1 TiB disk the fewest map bytes are added at N = {low['n']}"
            f" ({low['tib_added_few'] / 1e6:.1f} MB)."
        )
        if cur is not None:
            text += (
                f" The default N = {DEFAULT_SEGMENT_ENTRIES} (blockmap.DEFAULT_SEGMENT_ENTRIES) adds"
                f" {cur['tib_added_few'] / 1e6:.1f} MB"
                f" ({cur['tib_added_few'] / low['tib_added_few']:.2f}x the minimum) while its manifest list,"
                " which every listing, restore and mount of the point reads, is"
                f" {cur['tib_manifest'] / 1e6:.1f} MB instead of {low['tib_manifest'] / 1e6:.1f} MB."
            )
        out += ["", text]
    out += [
        "",
        "Times come from a 2-core VM that other work shares, so they vary between runs by up to 2x;"
        " the bytes do not vary.",
    ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per block size (medians reported)")
    parser.add_argument("--block-sizes", default=",".join(str(b // 1024) for b in BLOCK_SIZES), help="KiB")
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    parser.add_argument("--keep", action="store_true", help="keep /work/bench-data/disk afterwards")
    parser.add_argument("--reuse", action="store_true", help="reuse images kept by an earlier --keep run")
    parser.add_argument("--segment-block-size", type=int, default=32 * 1024)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop mount)", file=sys.stderr)
        return 2
    try:
        saved = DATA / "images.json"
        if args.reuse and saved.exists():
            state = json.loads(saved.read_text())
            base, changed, chosen, info = (
                Path(state["base"]),
                Path(state["changed"]),
                state["chosen"],
                state["info"],
            )
        else:
            base, changed, chosen, info = make_images()
            state = {"base": str(base), "changed": str(changed), "chosen": chosen, "info": info}
            saved.write_text(json.dumps(state))
        print(json.dumps(info), flush=True)
        rows = []
        segs: list[dict[str, Any]] = []
        for bs in (int(k) * 1024 for k in args.block_sizes.split(",")):
            runs = [run_block_size(bs, base, changed, chosen) for _ in range(args.repeat)]
            row = {k: statistics.median([r[k] for r in runs]) for k in runs[0] if not k.startswith("_")}
            rows.append(row)
            if bs == args.segment_block_size:
                segs = segment_table(runs[0]["_maps"], bs)
            print(json.dumps(row), flush=True)
        text = render(rows, segs, info, len(chosen), args.repeat)
        print(text)
        if args.write:
            RESULTS.write_text(text)
    finally:
        if not args.keep:
            subprocess.run(["umount", str(DATA / "mnt")], check=False, capture_output=True)
            shutil.rmtree(DATA, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
