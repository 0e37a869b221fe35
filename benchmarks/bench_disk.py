"""The disk-image benchmark's image: an ext4 file system filled with corpus files, and the 1% rewrite."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from bench_corpus import CorpusInfo
from bench_measure import run

BLOCK = 4096


def build_image(image: Path, corpus: CorpusInfo, *, size: int, fill: int) -> dict[str, object]:
    """Create ``image`` once: mkfs.ext4, loop-mount, copy corpus files until ``fill`` bytes, unmount.

    Reused when its marker says it was finished with the same size and fill.
    """
    marker = image.with_name(image.name + ".json")
    if image.exists() and marker.exists():
        info: dict[str, object] = json.loads(marker.read_text())
        if info.get("size") == size and info.get("fill") == fill:
            return info
    image.parent.mkdir(parents=True, exist_ok=True)
    for p in (image, marker):
        p.unlink(missing_ok=True)
    start = time.monotonic()
    partial = image.with_name(image.name + ".partial")
    partial.unlink(missing_ok=True)
    with open(partial, "wb") as f:
        f.truncate(size)
    run(["mkfs.ext4", "-q", "-F", "-L", "benchdisk", str(partial)])
    mnt = Path(tempfile.mkdtemp(prefix="bench-mnt-", dir=image.parent))
    loop = ""
    copied = files = 0
    try:
        loop = run(["losetup", "--find", "--show", str(partial)]).strip()
        run(["mount", loop, str(mnt)])
        for rel in corpus.files:
            if copied >= fill:
                break
            src = corpus.root / rel
            dst = mnt / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
            copied += src.stat().st_size
            files += 1
        os.sync()
    finally:
        # Always leave no mount and no loop device behind, even when the copy failed.
        if os.path.ismount(mnt):
            run(["umount", str(mnt)], check=False)
        if loop:
            run(["losetup", "-d", loop], check=False)
        mnt.rmdir()
    partial.rename(image)
    info = {
        "size": size,
        "fill": fill,
        "files_copied": files,
        "bytes_copied": copied,
        "allocated": image.stat().st_blocks * 512,
        "seconds": round(time.monotonic() - start, 1),
    }
    marker.write_text(json.dumps(info))
    return info


def fresh_copy(pristine: Path, work: Path) -> None:
    """Copy the pristine image to the working path, keeping it sparse."""
    work.unlink(missing_ok=True)
    run(["cp", "--sparse=always", str(pristine), str(work)])


def rewrite_blocks(image: Path, *, share: float = 0.01, seed: int = 20240601) -> dict[str, int]:
    """Overwrite ``share`` of the image's 4 KiB blocks, at seeded random offsets, with random bytes.

    The same seed gives the same blocks and bytes in every run and for every tool.
    """
    size = image.stat().st_size
    nblocks = size // BLOCK
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(nblocks), int(nblocks * share)))
    fd = os.open(image, os.O_WRONLY)
    try:
        for b in picked:
            os.pwrite(fd, rng.randbytes(BLOCK), b * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"blocks": len(picked), "bytes": len(picked) * BLOCK, "of_blocks": nblocks}
