"""Run a vault process under uvicorn (``kluis vault serve``)."""

from __future__ import annotations

import gc
import logging
import socket
import ssl

import uvicorn

from kluis.catalog import KluisError
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


def bind_listener(host: str, port: int) -> socket.socket:
    """The vault's listening socket, bound; VaultListenFailed when the address cannot be had.

    Bound here rather than by uvicorn, which logs a bare OSError and exits after the app
    (database, scheduler) has already started.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise KluisError("VaultListenFailed", listen=f"{host}:{port}", reason=reason) from None
    sock.set_inheritable(True)
    return sock


def check_tls(config: VaultConfig) -> None:
    """Load the certificate and key once before serving; VaultConfigInvalid naming the file
    when either is missing or not PEM (uvicorn would stop with a traceback)."""
    if not config.tls_cert or not config.tls_key:  # the configuration has both or neither
        return
    where = str(config.path or "configuration")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reason = f"the TLS certificate {config.tls_cert} or key {config.tls_key} cannot be loaded ({why})"
        raise KluisError("VaultConfigInvalid", path=where, reason=reason) from None


def serve(config: VaultConfig, *, log_level: str = "info") -> None:
    """Serve the vault until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = split_listen(config.listen)
    check_tls(config)
    listener = bind_listener(host, port)
    try:
        app = create_app(config)
        settle_garbage_collector()
        server = uvicorn.Server(
            uvicorn.Config(
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
        )
        logging.getLogger("kluis.vault").info("listening on %s:%d", host, listener.getsockname()[1])
        server.run(sockets=[listener])
    finally:
        listener.close()
