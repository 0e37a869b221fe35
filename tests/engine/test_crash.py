"""Crash safety: a backup SIGKILLed at random moments never leaves a broken repository."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from kluis.engine.restore import Restorer
from kluis.engine.verify import verify
from tests.engine.helpers import PASSPHRASE, snapshot_tree

KILLS = 24


def _kluis(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kluis", "repo", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_sigkill_at_random_points(tmp_path: Path) -> None:
    rnd = random.Random(20261122)
    src = tmp_path / "src"
    for d in range(8):
        (src / f"dir{d}").mkdir(parents=True)
        for f in range(60):
            size = rnd.choice([100, 5000, 60_000, 300_000])
            (src / f"dir{d}" / f"f{f}").write_bytes(rnd.randbytes(size))
    (src / "big").write_bytes(os.urandom(12 * 1024 * 1024))
    repo_dir = tmp_path / "repo"
    passfile = tmp_path / "pass"
    passfile.write_text(PASSPHRASE)
    env = {
        **os.environ,
        "KLUIS_FAST_KDF": "1",
        "KLUIS_PACK_SIZE": str(512 * 1024),  # many packs and index files: many places to die
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
    }
    common = ["--repo", str(repo_dir), "--passphrase-file", str(passfile)]
    assert _kluis("init", *common, env=env).wait() == 0

    # How long does one full backup take? Kill somewhere inside that window.
    started = time.monotonic()
    proc = _kluis("backup", str(src), *common, "--scratch", str(tmp_path / "scratch0"), env=env)
    assert proc.wait() == 0
    full = time.monotonic() - started

    from kluis.engine.repository import Repository
    from kluis.stores import LocalStore

    completed_after_kill = 0
    for i in range(KILLS):
        # Change some files so every run has new data to write.
        for _ in range(20):
            victim = src / f"dir{rnd.randrange(8)}" / f"f{rnd.randrange(60)}"
            victim.write_bytes(rnd.randbytes(rnd.choice([100, 70_000, 400_000])))
        proc = _kluis("backup", str(src), *common, "--scratch", str(tmp_path / f"scratch{i % 3}"), env=env)
        time.sleep(rnd.uniform(0.05, full))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        repo = Repository.open(LocalStore(repo_dir), passphrase=PASSPHRASE)
        report = verify(repo, read_data=True)
        assert report.ok, (i, report.problems[:3])
        if i % 6 == 5:
            # The next backup completes and restores byte-identical.
            proc = _kluis(
                "backup", str(src), *common, "--scratch", str(tmp_path / f"scratch{i % 3}"), env=env
            )
            assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
            completed_after_kill += 1
            repo = Repository.open(LocalStore(repo_dir), passphrase=PASSPHRASE)
            latest = repo.list_points()[-1].id
            out = tmp_path / f"out{i}"
            Restorer(repo, latest, out).run()
            assert snapshot_tree(out / str(src).lstrip("/")) == snapshot_tree(src)
    assert completed_after_kill == KILLS // 6
    repo = Repository.open(LocalStore(repo_dir), passphrase=PASSPHRASE)
    # Killed runs left only unreferenced packs behind, never a half-written recovery point.
    assert len(repo.list_points()) >= 1 + completed_after_kill
