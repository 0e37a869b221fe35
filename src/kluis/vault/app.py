"""The FastAPI application of a vault process.

``create_app(config)`` opens (and migrates) the database, opens the store and wires
the routers under ``/api/v1``. The scheduler starts with the application and stops
with it; OpenAPI is served at ``/openapi.json`` and ``/docs``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kluis import __version__
from kluis.stores import open_store
from kluis.vault import errors
from kluis.vault.api import alerts, extensions, items, jobs, machines, points, policies, repo, system, users
from kluis.vault.config import VaultConfig
from kluis.vault.context import VaultContext
from kluis.vault.db.migrate import open_database
from kluis.vault.scheduler import Scheduler

log = logging.getLogger("kluis.vault")
API_PREFIX = "/api/v1"


def open_context(config: VaultConfig) -> VaultContext:
    """Database (migrated) and store for a configuration."""
    db = open_database(config.db_url, config.vault_id)
    try:
        store = open_store(config.store_url)
    except Exception:
        db.dispose()
        raise
    return VaultContext(config=config, db=db, store=store)


def create_app(config: VaultConfig, *, ctx: VaultContext | None = None) -> FastAPI:
    """The vault's ASGI application."""
    context = ctx or open_context(config)
    scheduler = Scheduler(context)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context.notifier.bind(asyncio.get_running_loop())
        watcher = asyncio.create_task(machines.watch_database(context))
        if config.scheduler_enabled:
            scheduler.start()
        log.info("vault %s (%s) serving as %s", config.vault_name, config.vault_id, context.holder)
        try:
            yield
        finally:
            watcher.cancel()
            await asyncio.to_thread(scheduler.stop)
            context.close()

    app = FastAPI(
        title="Kluis vault",
        version=__version__,
        description="The Kluis vault API: machines, protected items, policies, jobs, recovery points,"
        " alerts, and the repository object API agents use. Every error is a catalog entry:"
        " `{code, message, causes, actions}`.",
        lifespan=lifespan,
    )
    app.state.ctx = context
    app.state.scheduler = scheduler
    errors.install(app)
    for module in (system, users, machines, repo, items, policies, jobs, points, alerts, extensions):
        app.include_router(module.router, prefix=API_PREFIX)
    return app
