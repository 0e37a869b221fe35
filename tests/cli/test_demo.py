"""``make demo`` end to end: ``python -m kluis.demo`` in an empty folder, then ``stop``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.agent.helpers import base_env
from tests.support.ports import free_port


def _alive(pid: int) -> bool:
    try:
        return b"kluis" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_demo_runs_from_scratch_and_stops(tmp_path: Path) -> None:
    env = base_env()
    port = free_port()
    run = subprocess.run(
        [sys.executable, "-m", "kluis.demo", "--port", str(port)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    demo = tmp_path / "demo"
    # Every step ran as the command a user would type, and the restore matched.
    for step in (
        "kluis vault init",
        "kluis agent register",
        "kluis protect files",
        "kluis backup now sample --wait",
    ):
        assert step in out, step
    assert "identical" in out and f"http://127.0.0.1:{port}" in out
    assert "python -m kluis.demo stop" in out or "kluis.demo stop" in out
    sample_files = sorted(p.relative_to(demo / "sample") for p in (demo / "sample").rglob("*"))
    restored = demo / "restore" / (demo / "sample").relative_to("/")
    assert sorted(p.relative_to(restored) for p in restored.rglob("*")) == sample_files
    for secret in ("admin-token", "passphrase", "cli.toml"):
        assert (demo / secret).stat().st_mode & 0o077 == 0, secret
    # The vault and the agent keep running for the user, until `stop`.
    pids = json.loads((demo / "pids.json").read_text())
    assert set(pids) == {"vault", "agent"} and all(_alive(p) for p in pids.values())
    items = subprocess.run(
        [sys.executable, "-m", "kluis", "items", "list", "--json"],
        env={**env, "KLUIS_CLI_CONFIG": str(demo / "cli.toml")}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert items.returncode == 0 and [i["name"] for i in json.loads(items.stdout)] == ["sample"]
    stopped = subprocess.run(
        [sys.executable, "-m", "kluis.demo", "stop"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert stopped.returncode == 0 and "Stopped the demo vault" in stopped.stdout, (
        stopped.stdout + stopped.stderr
    )
    assert not any(_alive(p) for p in pids.values())
    assert not os.path.exists(demo / "pids.json")
