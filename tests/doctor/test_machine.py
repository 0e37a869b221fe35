"""``kluis doctor`` on a machine: all-pass when healthy, then each broken condition made for real.

The module shares one vault and one registered agent (daemon running, snapshot
extension installed). Each test breaks one thing, asserts the doctor's verdict and
catalog code, and puts it back in ``finally``. Conditions that need their own
machine (a full scratch file system, a slow backup in progress) register one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kluis.agent.extensions.snapshot import (
    EXTENSION_NAME,
    ExtensionManager,
    build_snapshot_extension_package,
)
from tests.agent.helpers import AgentProc, VaultServer
from tests.doctor.helpers import (
    edit_config,
    run_doctor,
    stop_daemon,
)

# Skips a healthy machine may show: capabilities this kernel lacks, with the reason.
KERNEL_SKIPS = {"snapshot-lvm": "no device-mapper in this kernel"}


@dataclass
class Machine:
    """The module's registered machine."""

    vault: VaultServer
    agent: AgentProc
    root: Path
    creds: Path

    @property
    def extensions(self) -> Path:
        """Its extension directory."""
        return self.root / "extensions"

    @property
    def points(self) -> Path:
        """Its restore point collections."""
        return self.root / "points"


def install_extension(directory: Path, machine: str) -> ExtensionManager:
    """Install the snapshot extension as the agent does: the vault's package, checked and loaded."""
    manager = ExtensionManager(directory, machine=machine)
    with tempfile.TemporaryDirectory() as tmp:
        path, sha256, version = build_snapshot_extension_package(tmp)
        package = path.read_bytes()
    state = manager.install(EXTENSION_NAME, version, sha256, lambda: package)
    assert state.state == "succeeded"
    return manager


def register(vault: VaultServer, workdir: Path, name: str, scratch: Path | None = None) -> AgentProc:
    """A registered agent (no daemon yet) with its extension and instant-point folders in its root."""
    root = workdir / name
    agent = AgentProc(root=root, hostname=name, scratch=scratch or root / "scratch")
    result = agent.register(vault.credentials_file(workdir / "creds"))
    assert result.rc == 0, result.stdout + result.stderr
    agent.tune(heartbeat_interval=1, poll_wait=5)
    edit_config(
        agent,
        extensions={"enable": True, "dir": str(root / "extensions")},
        snapshot={"instant_points": str(root / "points")},
    )
    return agent


@pytest.fixture(scope="module")
def machine(vault: VaultServer, workdir: Path) -> Iterator[Machine]:
    agent = register(vault, workdir, "doc-host-1")
    install_extension(agent.root / "extensions", agent.hostname)
    agent.start()
    try:
        yield Machine(vault, agent, agent.root, workdir / "creds")
    finally:
        stop_daemon(agent)


def test_healthy_machine_passes_every_check(machine: Machine) -> None:
    report = run_doctor(machine.agent)
    assert report.rc == 0, report.not_passing()
    problems = {}
    for check in report.data["checks"]:
        if check["verdict"] == "pass":
            continue
        reason = KERNEL_SKIPS.get(check["id"])
        if check["verdict"] == "skip" and reason and reason in check["summary"]:
            continue
        problems[check["id"]] = f"{check['verdict']}: {check['summary']}"
    assert not problems
    assert report.check("extension-handlers")["summary"].startswith("installed and intact: snapshot")
    assert report.data["ok"] is True and report.data["counts"]["fail"] == 0
