"""``kluis repo backup-disk`` / ``restore-disk``: the disk engine from the command line, no vault."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

BLOCK = 4096


def _kluis(*args: str, scratch: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLUIS_")}
    env |= {"KLUIS_FAST_KDF": "1", "KLUIS_LANG": "en", "XDG_CACHE_HOME": str(scratch)}
    proc = subprocess.run(
        [sys.executable, "-m", "kluis", "repo", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return {"rc": proc.returncode, "data": data, "stderr": proc.stderr}


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_backup_changed_blocks_then_restore_identical(tmp_path: Path) -> None:
    repo, pw, scratch = tmp_path / "repo", tmp_path / "pw", tmp_path / "cache"
    pw.write_text("disk cli passphrase, not secret\n")
    common = ("--repo", str(repo), "--passphrase-file", str(pw))
    assert _kluis("init", *common, scratch=scratch)["rc"] == 0

    # A 48 MiB image: random data in the first half, the rest a hole (zero blocks are not stored).
    image = tmp_path / "disk.img"
    rng = random.Random(5)
    with open(image, "wb") as f:
        f.write(rng.randbytes(24 << 20))
        f.truncate(48 << 20)
    first = _kluis("backup-disk", str(image), *common, scratch=scratch)
    assert first["rc"] == 0, first["stderr"]
    assert first["data"]["previous_point"] is None and first["data"]["size"] == 48 << 20
    assert first["data"]["bytes_new"] >= 24 << 20

    # 1% of the 4 KiB blocks rewritten in place: the second point stores about that much.
    with open(image, "r+b") as f:
        for _ in range((48 << 20) // BLOCK // 100):
            f.seek(rng.randrange((48 << 20) // BLOCK) * BLOCK)
            f.write(rng.randbytes(BLOCK))
    second = _kluis("backup-disk", str(image), *common, scratch=scratch)
    assert second["rc"] == 0, second["stderr"]
    assert second["data"]["previous_point"] == first["data"]["point_id"]
    assert second["data"]["bytes_new"] < 20 << 20, second["data"]  # not another full copy

    listed = _kluis("points", *common, scratch=scratch)["data"]
    assert [p["kind"] for p in listed] == ["disk", "disk"]

    out = tmp_path / "restored.img"
    restored = _kluis("restore-disk", "latest", str(out), *common, scratch=scratch)
    assert restored["rc"] == 0, restored["stderr"]
    assert _digest(out) == _digest(image)
    assert os.stat(out).st_blocks * 512 < 40 << 20, "the hole should stay a hole"
    older = tmp_path / "older.img"
    assert (
        _kluis("restore-disk", first["data"]["point_id"][:12], str(older), *common, scratch=scratch)["rc"]
        == 0
    )
    assert _digest(older) != _digest(out)

    # A disk that is not in the point, and a files point, are coded errors.
    missing = _kluis(
        "restore-disk", "latest", str(tmp_path / "x.img"), "--disk", "nope", *common, scratch=scratch
    )
    assert missing["rc"] != 0 and missing["data"]["error"]["code"] == "DiskNotInPoint"
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a").write_text("a")
    assert _kluis("backup", str(tmp_path / "files"), *common, scratch=scratch)["rc"] == 0
    wrong = _kluis("restore-disk", "latest", str(tmp_path / "y.img"), *common, scratch=scratch)
    assert wrong["rc"] != 0 and wrong["data"]["error"]["code"] == "ValidationFailed"
