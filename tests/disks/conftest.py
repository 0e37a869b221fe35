"""A vault, one agent and the issue's "VM" for disk job tests (root, real loop devices).

The VM: an ext4 image file on an XFS file system made with reflink (the host's
storage), attached to a loop device and mounted as the guest's file system. The
teardown thaws, unmounts and detaches whatever a test left behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.agent.helpers import AgentProc, Result, VaultServer, base_env, kluis, start_vault
from tests.extensions.helpers import Guest, Mounts, make_guest, run

TOOLS = ("losetup", "mkfs.xfs", "mkfs.ext4", "fsfreeze", "mount", "umount")


@dataclass
class Site:
    """The module's vault, agent, VM and policy."""

    vault: VaultServer
    agent: AgentProc
    guest: Guest
    host: Path
    mounts: Mounts
    policy: str
    workdir: Path

    def cli(self, *args: str, timeout: float = 60) -> Result:
        """``kluis ARGS`` as an administrator on the agent's machine."""
        env = base_env()
        env.update(
            KLUIS_VAULT_URL=self.vault.url,
            KLUIS_TOKEN=self.vault.admin_token,
            KLUIS_AGENT_CONFIG_DIR=str(self.agent.config_dir),
        )
        return kluis(*args, env=env, timeout=timeout)

    def backup(self, item_id: str, timeout: float = 60) -> dict[str, Any]:
        """An on-demand backup, waited for."""
        job = self.vault.backup(item_id)
        return self.vault.wait_job(job["id"], timeout=timeout)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """Vault + agent processes and the VM on an XFS reflink host."""
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices, mounts and fsfreeze")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop device support in this kernel")
    workdir = Path(tempfile.mkdtemp(prefix="kluis-disks-test-"))
    mounts = Mounts()
    vault: VaultServer | None = None
    agent: AgentProc | None = None
    try:
        image = workdir / "host-xfs.img"
        with open(image, "wb") as fh:
            fh.truncate(512 * 1024 * 1024)
        run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
        host = mounts.mount(mounts.loop(image), workdir / "host")
        guest = make_guest(host, mounts, workdir / "guest", size_mib=64)
        vault = start_vault(workdir)
        creds = vault.credentials_file(workdir / "creds")
        agent = AgentProc(root=workdir / "agent", hostname="vmhost", scratch=workdir / "agent" / "scratch")
        registered = agent.register(creds)
        assert registered.rc == 0, registered.stdout + registered.stderr
        agent.tune(heartbeat_interval=1, poll_wait=5)
        agent.start()
        policy = vault.ok(
            "POST",
            "/api/v1/policies",
            json={
                "name": "vms",
                "schedule": {"kind": "daily", "timezone": "UTC", "times": ["03:00"]},
                "retention": {"daily": 30, "instant_days": 2},
            },
        )
        yield Site(vault, agent, guest, host, mounts, policy["id"], workdir)
    finally:
        if agent is not None:
            agent.stop()
        if vault is not None:
            vault.kill()
            vault.close()
        mounts.close()
        shutil.rmtree(workdir, ignore_errors=True)
