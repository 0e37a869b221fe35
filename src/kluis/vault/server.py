"""Run a vault process under uvicorn (``kluis vault serve``)."""

from __future__ import annotations

import gc
import logging

import uvicorn

from kluis.vault.app import create_app
from kluis.vault.config import VaultConfig


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) to its parts; ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def settle_garbage_collector() -> None:
    """Keep full collections short and rare in a long-running server.

    A full (generation 2) collection stops every thread while it walks all tracked objects;
    with a thousand agents long-polling, the vault holds ~300k of them and a pass took
    100-185 ms, which was the whole tail of the heartbeat latency. The modules, the app and
    the routes never become garbage: freezing them takes them out of every pass. A larger
    young generation lets a request's short-lived objects die young instead of being
    promoted, and a full pass waits for 100 middle-generation passes (about 25 minutes at
    that load) instead of 10 (benchmarks/RESULTS-vault.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(5_000, 10, 100)


def serve(config: VaultConfig, *, log_level: str = "info") -> None:
    """Serve the vault until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = split_listen(config.listen)
    app = create_app(config)
    settle_garbage_collector()
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=config.tls_cert,
        ssl_keyfile=config.tls_key,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
