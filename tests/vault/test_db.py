"""The database layer: migrations create exactly the models' schema, on both backends."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from kluis.catalog import KluisError
from kluis.vault.db import open_database
from kluis.vault.db.migrate import current_revision, head_revision
from kluis.vault.db.models import Base


def test_migrations_match_the_models(new_db_url: Callable[[], str]) -> None:
    db = open_database(new_db_url(), "vault-a")
    try:
        assert current_revision(db) == head_revision()
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
        assert diff == []
    finally:
        db.dispose()


def test_concurrent_starts_migrate_once_and_claim_the_database(new_db_url: Callable[[], str]) -> None:
    url = new_db_url()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            open_database(url, "vault-a").dispose()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with pytest.raises(KluisError) as info:
        open_database(url, "vault-b")
    assert info.value.code == "VaultDatabaseUnavailable" and "vault-a" in info.value.message


def test_unreachable_database_is_a_catalog_error() -> None:
    with pytest.raises(KluisError) as info:
        open_database("postgresql://nobody@127.0.0.1:1/none", "v")
    assert info.value.code == "VaultDatabaseUnavailable"
