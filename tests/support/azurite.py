"""Azurite as a real Azure Blob server for tests.

Azurite is installed into ``tools/node`` by ``scripts/install-azurite.sh`` (the
``deps`` target of the Makefile). It runs with telemetry off and with
``--skipApiVersionCheck``, because the newest azure-storage-blob speaks an API
version that Azurite may not list yet. Azurite checks Shared Key signatures, so
requests signed with a wrong key are refused.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support._process import clean_env, log_tail, spawn, stop
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
AZURITE_BLOB = REPO / "tools" / "node" / "node_modules" / ".bin" / "azurite-blob"
START_TIMEOUT = 30.0

#: Azurite's fixed development account. The key is public (documented by Microsoft), not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class AzuriteServer:
    """A running Azurite blob service and how to reach it."""

    port: int
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    account_name: str = ACCOUNT_NAME
    account_key: str = ACCOUNT_KEY

    @property
    def account_url(self) -> str:
        """The blob endpoint of the development account (path-style, as Azurite serves it)."""
        return f"http://127.0.0.1:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        """A connection string with the account key and this server's endpoint."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.account_url};"
        )

    @property
    def log(self) -> Path:
        """The server's combined output."""
        return self.workdir / "azurite.log"

    def stop(self) -> None:
        """Stop the server with SIGTERM."""
        stop(self.process)


def start_azurite(workdir: Path) -> AzuriteServer:
    """Start Azurite's blob service on a fresh loopback port; return once it accepts connections."""
    if not AZURITE_BLOB.exists():
        raise FileNotFoundError(f"{AZURITE_BLOB} missing: run scripts/install-azurite.sh (make deps)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    args = [
        str(AZURITE_BLOB),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(data),
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--silent",
    ]
    log = workdir / "azurite.log"
    process = spawn(args, log=log, env=clean_env(["AZURE_", "AZURITE_"]), cwd=workdir)
    server = AzuriteServer(port=port, workdir=workdir, process=process)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"Azurite did not start (exit {process.returncode}):\n{log_tail(log)}")
        time.sleep(0.05)
    return server


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[AzuriteServer]:
    """One Azurite for the whole test session."""
    # Not under pytest's basetemp: a concurrent pytest run may prune old basetemps mid-session.
    workdir = Path(tempfile.mkdtemp(prefix="kluis-azurite-"))
    server = start_azurite(workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
