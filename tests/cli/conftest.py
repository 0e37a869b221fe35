"""A vault server and a registered agent daemon (real processes) for the CLI tests.

Commands run as ``python -m kluis ...`` subprocesses with the environment a user on
the agent's machine would have: the vault URL and an admin token in ``KLUIS_VAULT_URL``
and ``KLUIS_TOKEN``, the agent's configuration in ``KLUIS_AGENT_CONFIG_DIR``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent.helpers import AgentProc, Result, VaultServer, base_env, kluis, start_vault


@dataclass
class World:
    """One vault, one agent, and the environment the CLI runs with."""

    root: Path
    vault: VaultServer
    agent: AgentProc
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 60, **extra_env: str) -> Result:
        """``kluis ARGS`` as the user on the agent's machine."""
        env = {**self.env, **extra_env}
        return kluis(*args, env=env, timeout=timeout, cwd=self.root)

    def ok(self, *args: str, timeout: float = 60) -> Result:
        """A command that must succeed."""
        result = self.run(*args, timeout=timeout)
        assert result.rc == 0, f"kluis {' '.join(args)} -> {result.rc}\n{result.stdout}\n{result.stderr}"
        return result


def cli_env(root: Path) -> dict[str, str]:
    """A clean environment whose CLI settings and caches live under ``root``."""
    env = base_env()
    env["KLUIS_CLI_CONFIG"] = str(root / "cli.toml")
    env["XDG_CACHE_HOME"] = str(root / "cache")
    env["XDG_CONFIG_HOME"] = str(root / "config")
    return env


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A running vault and a registered, running agent (host name ``cli-host``)."""
    root = tmp_path_factory.mktemp("cli")
    vault = start_vault(root)
    agent = AgentProc(root / "agent", hostname="cli-host", scratch=root / "scratch")
    try:
        registered = agent.register(vault.credentials_file(root / "creds"))
        assert registered.rc == 0, registered.stdout + registered.stderr
        agent.tune(poll_wait=3)  # short long-polls: the daemon stops quickly at the end
        agent.start()
        env = cli_env(root)
        env.update(
            KLUIS_VAULT_URL=vault.url,
            KLUIS_TOKEN=vault.admin_token,
            KLUIS_AGENT_CONFIG_DIR=str(agent.config_dir),
        )
        yield World(root, vault, agent, env)
    finally:
        agent.stop()
        vault.kill()  # an agent's pending long poll would hold a graceful stop for seconds
        vault.close()


def unmount_quietly(path: Path) -> None:
    """Drop a FUSE mount a failed test left behind."""
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)
