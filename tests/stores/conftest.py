"""Store fixtures: every backend the conformance suite runs against.

Add a backend by adding its name to ``BACKENDS`` and a branch in ``store``.
The S3 and Azure backends run against real servers on loopback (SeaweedFS and
Azurite), each started once per session and only when a test asks for it.
Every test gets a fresh, empty store: a new prefix in the session's bucket on
S3, a new container on Azure.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kluis.stores import LocalStore, Store, open_store
from tests.stores.helpers import azure_url, s3_url, unique
from tests.support.azurite import AzuriteServer, azurite_server  # noqa: F401 - fixture
from tests.support.s3server import S3Server, s3_server  # noqa: F401 - fixture

BACKENDS = ["local", "s3", "azure"]


@pytest.fixture(autouse=True)
def _hermetic_cloud_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No credentials or config from the machine, and never a request to a cloud metadata service."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "AZURE_")):
            monkeypatch.delenv(key)
    nowhere = tmp_path_factory.getbasetemp() / "no-aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    # Without keys boto3 would ask the EC2 instance metadata address, which is not loopback.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:  # noqa: F811 - fixture
    """The session's SeaweedFS, with its keys in the environment (boto3's usual chain)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    return s3_server


@pytest.fixture
def azurite(azurite_server: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> AzuriteServer:  # noqa: F811
    """The session's Azurite, with its connection string in the environment."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_server.connection_string)
    return azurite_server


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store of each backend."""
    if request.param == "local":
        s: Store = LocalStore(tmp_path / "store")
    elif request.param == "s3":
        server: S3Server = request.getfixturevalue("s3")
        s = open_store(s3_url(server, prefix=unique(), create="1"))
    elif request.param == "azure":
        azure: AzuriteServer = request.getfixturevalue("azurite")
        s = open_store(azure_url(azure, unique(), create="1"))
    else:  # pragma: no cover - a name in BACKENDS without a branch here
        raise AssertionError(request.param)
    yield s
    s.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections but never answers (a hung server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]
