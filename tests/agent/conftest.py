"""Fixtures for agent tests: one vault server per module (real ``kluis vault serve``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.helpers import VaultServer, start_vault


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A directory for the module's servers and agents (not under pytest's basetemp, which may be pruned)."""
    path = Path(tempfile.mkdtemp(prefix="kluis-agent-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def vault(request: pytest.FixtureRequest, workdir: Path) -> Iterator[VaultServer]:
    """One vault process for the module (with the module's ``VAULT_OVERRIDES``)."""
    server = start_vault(workdir, **getattr(request.module, "VAULT_OVERRIDES", {}))
    try:
        yield server
    finally:
        server.kill()  # an agent's long poll would hold a graceful stop for seconds
        server.close()
