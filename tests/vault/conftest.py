"""Vault test fixtures: every database test runs on SQLite and on a real PostgreSQL 15.

``backend`` is module-scoped and parametrised, so each test module starts its
servers once per backend and shares them between its tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.postgres import PostgresCluster, PostgresUnavailable
from tests.vault.helpers import VaultServer

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL cluster for the session."""
    try:
        cluster = PostgresCluster()
        cluster.start()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot run here: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this module's run."""
    return str(request.param)


@pytest.fixture(scope="module")
def new_db_url(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], str]:
    """Makes fresh, empty databases of the module's backend."""

    def make() -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path_factory.mktemp('db') / 'vault.db'}"
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        return cluster.create_database()

    return make


@pytest.fixture(scope="module")
def make_vault(
    new_db_url: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., VaultServer]]:
    """Makes vaults (not started) on fresh databases; all are stopped at the module's end."""
    made: list[VaultServer] = []

    def make(db_url: str | None = None, **overrides: Any) -> VaultServer:
        vault = VaultServer(Path(tmp_path_factory.mktemp("vault")), db_url or new_db_url(), **overrides)
        made.append(vault)
        return vault

    yield make
    for vault in made:
        vault.close()


@pytest.fixture(scope="module")
def vault(make_vault: Callable[..., VaultServer]) -> VaultServer:
    """The module's running vault."""
    return make_vault().start()
