"""A tiny HTTP forward proxy for tests: answers 407 without credentials, forwards with them.

It understands what the agent sends: absolute-form requests for ``http://`` vaults and
``CONNECT`` for ``https://`` ones. Each client connection carries one request (the
answer closes it), which keeps the proxy small. Runs an asyncio loop in a thread on a
free loopback port and records every request line it saw.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from urllib.parse import urlsplit

_407 = (
    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
    b'Proxy-Authenticate: Basic realm="kluis-test"\r\n'
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)


class TestProxy:
    """A proxy on 127.0.0.1; ``credentials`` None means it always answers 407."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.credentials = credentials
        self.seen: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def __enter__(self) -> TestProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        """The proxy URL with its credentials (when it has any)."""
        if self.credentials:
            return f"http://{self.credentials[0]}:{self.credentials[1]}@127.0.0.1:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._server.close()

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.credentials is None:
            return False
        expected = base64.b64encode(f"{self.credentials[0]}:{self.credentials[1]}".encode()).decode()
        return headers.get("proxy-authorization", "") == f"Basic {expected}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        self.seen.append(lines[0])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if not self._authorized(headers):
            writer.write(_407)
            await writer.drain()
            writer.close()
            return
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _pipe_both(reader, writer, up_reader, up_writer)
            return
        url = urlsplit(target)
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        path = url.path + (f"?{url.query}" if url.query else "")
        out = [f"{method} {path} {version}"]
        out += [f"{k}: {v}" for k, v in headers.items() if k not in ("proxy-authorization", "connection")]
        out.append("Connection: close")
        up_writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        length = int(headers.get("content-length", "0"))
        if length:
            up_writer.write(await reader.readexactly(length))
        await up_writer.drain()
        # Tell the client this connection ends with the answer (one request per connection).
        resp_head = (await up_reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        kept = [h for h in resp_head[1:] if h and not h.lower().startswith("connection:")]
        writer.write(("\r\n".join([resp_head[0], *kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
        while chunk := await up_reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        up_writer.close()
        writer.close()


async def _pipe_both(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
        dst.close()

    await asyncio.gather(pipe(a_reader, b_writer), pipe(b_reader, a_writer))
