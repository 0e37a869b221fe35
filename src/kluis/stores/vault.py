"""A store that is a machine's repository in a vault, over the vault's object API.

The agent's engine works on any :class:`~kluis.stores.base.Store`; against a vault it
uses ``VaultStore(url, machine_id, token)``. Every write is checked by the vault
before it becomes visible (see docs/api.md); reads stream byte ranges. Connection
failures and 502/503/504 answers are retried with exponential backoff; every PUT of
the repository format is idempotent, so a retried upload is safe. Errors the vault
reports come back as the same catalog errors (code and parameters).

Points need the job context: set ``item_id`` and ``job_id`` (constructor or
:meth:`VaultStore.for_job`) and ``points/`` uploads carry them.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast
from urllib.parse import quote, urlsplit

import httpx

from kluis.catalog import KluisError
from kluis.stores.base import ObjectInfo, Store, check_name

PAGE = 1000
HAVE_BATCH = 10_000
_RETRY_STATUS = (502, 503, 504)
_SEND_SLICE = 1024 * 1024  # upload pieces of a buffer body (each is copied once, by h11)
Verify = bool | str | ssl.SSLContext


def pinned_context(cert_pem: str) -> ssl.SSLContext:
    """A TLS context trusting exactly one certificate (the one in a vault credentials file)."""
    ctx = ssl.create_default_context(cadata=cert_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _error_from(response: httpx.Response, url: str) -> KluisError:
    """The catalog error a vault answered with, or VaultUnexpectedResponse."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        raw = body.get("params")
        params: dict[str, Any] = raw if isinstance(raw, dict) else {}
        try:
            return KluisError(body["code"], detail=body.get("detail"), **params)
        except LookupError:
            # A code this client does not know (version skew): keep the vault's own words.
            return KluisError(
                "VaultUnexpectedResponse",
                url=url,
                status=response.status_code,
                detail=str(body.get("message", "")),
            )
    return KluisError("VaultUnexpectedResponse", url=url, status=response.status_code)


def _transport_error(exc: httpx.TransportError, url: str) -> KluisError:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return KluisError("TlsHandshakeFailed", host=urlsplit(url).hostname or url, reason=str(cause))
        cause = cause.__cause__ or cause.__context__
    stage = "connect" if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) else "request"
    return KluisError("100050", url=url, stage=stage, reason=str(exc) or type(exc).__name__)


class _Http:
    """An HTTP client with the vault's error mapping and retries."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        verify: Verify,
        timeout: float,
        retries: int,
        backoff: float,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = client or httpx.Client(
            base_url=self.base_url, headers=headers, verify=verify, timeout=timeout
        )
        self.retries = max(1, retries)
        self.backoff = backoff

    def request(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> httpx.Response:
        url = self.base_url + path
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise _transport_error(exc, url) from None
            else:
                if response.status_code in ok:
                    return response
                if response.status_code not in _RETRY_STATUS or attempt == self.retries:
                    raise _error_from(response, url)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.client.close()


# What a request over http.client can fail with; the caller then asks again through httpx.
_BROKEN = (OSError, http.client.HTTPException, KluisError)


class RawTransfers:
    """Object reads and pack uploads over ``http.client``, one keep-alive connection per thread.

    httpx hands bodies to h11, which works on them in Python. A response body is parsed
    64 KiB at a time: about 8 ms of CPU per 4 MiB pack segment on these machines, against
    1.3 ms for the few ``recv_into`` calls of ``http.client``. A request body is joined
    into a fresh copy of every slice: about 20 ms of CPU and 3,700 page faults per 17 MiB
    pack, against 3.4 ms and none when ``http.client`` hands the caller's buffer to
    ``sendall``. Both costs fall under the interpreter lock that the engine's workers need
    between their zstd and BLAKE3 calls. Only without a proxy; anything unusual (an error
    status, a broken connection, a certificate that is not the pinned one) answers ``None``
    or ``False``, and the caller sends the request again through its httpx client, which
    retries and maps errors as for every other request.
    """

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        check_peer: Callable[[bytes | None], None] | None = None,
        before_body: Callable[[int], None] | None = None,
        pace: Callable[[memoryview], Iterable[bytes | memoryview]] | None = None,
    ) -> None:
        """``check_peer`` gets the server's DER certificate and raises to refuse it;
        ``before_body`` gets each response body's length first, and ``pace`` cuts each
        upload into the pieces it may send when (the bandwidth limit's hooks)."""
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.base_path = parts.path.rstrip("/")
        self.headers = dict(headers)
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.check_peer = check_peer
        self.before_body = before_body
        self.pace = pace
        self._local = threading.local()
        # How many requests this path served and handed back (for tests and profiles).
        self.served = 0
        self.declined = 0
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            if not _closed_by_peer(conn):
                return conn
            # The vault closed the idle connection: starting a request on it would fail
            # part-way and send the pack a second time through httpx.
            self._drop()
        if self.https:
            tls = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self.ssl_context
            )
            tls.connect()
            if self.check_peer is not None:
                sock = tls.sock
                der = sock.getpeercert(True) if isinstance(sock, ssl.SSLSocket) else None
                try:
                    self.check_peer(der)
                except Exception:
                    tls.close()
                    raise
            conn = tls
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def get(self, path: str, headers: dict[str, str]) -> bytes | None:
        """The body of a 200 or 206 answer to GET ``path``; ``None`` for anything else."""
        try:
            conn = self._connection()
            conn.request("GET", self.base_path + path, headers={**self.headers, **headers})
            response = conn.getresponse()
            if response.status not in (200, 206):
                response.read()  # leave the connection clean; the caller asks again
                self._settle(response, ok=False)
                return None
            known = response.length
            if self.before_body is not None and known is not None:
                self.before_body(known)
            body = response.read()
            if self.before_body is not None and known is None:
                self.before_body(len(body))
            self._settle(response, ok=True)
            return body
        except _BROKEN:
            self._broken()
            return None

    def put(self, path: str, body: memoryview, headers: dict[str, str]) -> bool:
        """PUT ``body`` (sent from the caller's buffer, not copied); True once the vault
        answered 200 or 201, False for anything else."""
        try:
            conn = self._connection()
            conn.putrequest("PUT", self.base_path + path, skip_accept_encoding=True)
            for key, value in {**self.headers, **headers, "Content-Length": str(len(body))}.items():
                conn.putheader(key, value)
            conn.endheaders()
            for piece in self.pace(body) if self.pace is not None else (body,):
                conn.send(piece)
            response = conn.getresponse()
            response.read()  # the answer's small JSON; the connection stays clean
            return self._settle(response, ok=response.status in (200, 201))
        except _BROKEN:
            self._broken()
            return False

    def _settle(self, response: http.client.HTTPResponse, *, ok: bool) -> bool:
        """Count a finished exchange, and drop a connection the vault is closing; returns ``ok``."""
        if response.will_close:
            self._drop()
        if ok:
            self.served += 1
        else:
            self.declined += 1
        return ok

    def _broken(self) -> None:
        """A request that failed on the way: its connection is dropped, the caller asks again."""
        self._drop()
        self.declined += 1

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle keep-alive connection has been closed from the other end.

    An idle connection has nothing to read; readable means end of file (or a stray byte,
    which would spoil the next answer just as well).
    """
    sock = conn.sock
    if sock is None:
        return False  # not connected yet: http.client connects on the first request
    # poll, not select: select refuses descriptors past 1024, which a busy agent may hold.
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class VaultStore(Store):
    """The repository of ``repo_machine_id`` (default: the machine itself) in a vault."""

    remote = True

    def __init__(
        self,
        url: str,
        machine_id: str,
        token: str,
        *,
        repo_machine_id: str | None = None,
        item_id: str | None = None,
        job_id: str | None = None,
        verify: Verify = True,
        timeout: float = 120.0,
        retries: int = 6,
        backoff: float = 0.5,
        client: httpx.Client | None = None,
        raw: RawTransfers | None = None,
    ) -> None:
        """``client``, when given, is used as is (it must carry the base URL and the token):
        the agent passes one with its proxy, pinned certificate and bandwidth limit.
        ``raw`` (see :class:`RawTransfers`) serves object reads and pack uploads when it can."""
        self.vault_url = url.rstrip("/")
        self.machine_id = machine_id
        self.repo_machine_id = repo_machine_id or machine_id
        self.item_id = item_id
        self.job_id = job_id
        self._token = token
        self._verify = verify
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._prefix = f"/api/v1/machines/{self.repo_machine_id}/repo"
        self.url = self.vault_url + self._prefix
        self._raw = raw
        self._http = _Http(
            self.vault_url,
            token,
            verify=verify,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            client=client,
        )

    def for_job(self, item_id: str | None, job_id: str | None) -> VaultStore:
        """The same store, with recovery points recorded for a backup job."""
        return VaultStore(
            self.vault_url,
            self.machine_id,
            self._token,
            repo_machine_id=self.repo_machine_id,
            item_id=item_id,
            job_id=job_id,
            verify=self._verify,
            timeout=self._timeout,
            retries=self._retries,
            backoff=self._backoff,
        )

    def _object(self, name: str) -> str:
        return f"{self._prefix}/objects/{quote(check_name(name))}"

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        params: dict[str, str] = {}
        if name.startswith("points/"):
            if self.item_id:
                params["item"] = self.item_id
            if self.job_id:
                params["job"] = self.job_id
        headers = {"Content-Type": "application/octet-stream"}
        view = memoryview(data).cast("B")
        raw = self._raw
        # Packs are nearly all the bytes a backup sends (see RawTransfers).
        if (
            raw is not None
            and name.startswith("data/")
            and len(view)
            and raw.put(self._object(name), view, headers)
        ):
            return
        content: bytes | list[bytes]
        if isinstance(data, bytes) or not len(view):
            content = bytes(data)
        else:
            # A caller's reused buffer goes out in slices, without a copy of the whole: h11
            # copies whatever piece it is handed, and a fresh 16 MiB copy (page faults and
            # all, under the interpreter lock) held every other thread of an agent up. A list,
            # not a generator, so that a retry can send it again.
            # httpx types its iterables as bytes; it sends any buffer.
            content = cast(
                "list[bytes]", [view[i : i + _SEND_SLICE] for i in range(0, len(view), _SEND_SLICE)]
            )
            headers["Content-Length"] = str(len(view))
        self._http.request(
            "PUT",
            self._object(name),
            content=content,
            params=params,
            headers=headers,
        )

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("negative offset or length")
        if length == 0:
            self.stat(name)  # a missing object is still an error
            return b""
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        if self._raw is not None:
            body = self._raw.get(self._object(name), headers)
            if body is not None:
                return body
        try:
            response = self._http.request("GET", self._object(name), ok=(200, 206), headers=headers)
        except KluisError as exc:
            if exc.code == "VaultUnexpectedResponse" and exc.params.get("status") == 416:
                return b""  # the range starts past the end: no bytes
            raise
        return response.content

    def stat(self, name: str) -> ObjectInfo:
        try:
            response = self._http.request("HEAD", self._object(name))
        except KluisError as exc:
            if exc.code == "VaultUnexpectedResponse" and exc.params.get("status") == 404:
                raise self.not_found(name) from None
            raise
        return ObjectInfo(name, int(response.headers.get("content-length", "0")))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        after: str | None = None
        while True:
            params: dict[str, Any] = {"prefix": prefix, "limit": PAGE}
            if after is not None:
                params["after"] = after
            page = self._http.request("GET", f"{self._prefix}/objects", params=params).json()
            for entry in page:
                yield ObjectInfo(str(entry["name"]), int(entry["size"]))
            if len(page) < PAGE:
                return
            after = str(page[-1]["name"])

    def delete(self, name: str) -> None:
        self._http.request("DELETE", self._object(name), ok=(200, 204))

    def have(self, ids: Iterable[bytes]) -> set[bytes]:
        """Which of these blob ids the vault holds for this repository."""
        wanted = list(dict.fromkeys(ids))
        found: set[bytes] = set()
        for i in range(0, len(wanted), HAVE_BATCH):
            batch = [b.hex() for b in wanted[i : i + HAVE_BATCH]]
            answer = self._http.request("POST", f"{self._prefix}/have", json={"ids": batch}).json()
            found.update(bytes.fromhex(h) for h in answer["have"])
        return found

    def close(self) -> None:
        self._http.close()
        if self._raw is not None:
            self._raw.close()
