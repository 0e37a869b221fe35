"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import contextlib
import socket
import time


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that nothing listens on right now.

    All sockets stay bound until every port is chosen, so the kernel cannot hand
    out the same port twice within one call.
    """
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port() -> int:
    """One free port on 127.0.0.1."""
    return free_ports(1)[0]


def closed_port() -> int:
    """A loopback port that refuses connections (nothing listens on it)."""
    return free_port()


def wait_for_tcp(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    """Block until ``host:port`` accepts a TCP connection; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s") from exc
            time.sleep(0.05)
