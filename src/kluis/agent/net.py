"""Reaching the vault: a step-by-step connection probe, the HTTP client, and error mapping.

The probe does each step itself (DNS, TCP, proxy, TLS, HTTP) so a failure names the
step that failed, as the catalog's ID 100050 asks. The HTTP client pins the vault's
TLS certificate (from the credentials file), goes through the configured proxy, and
passes every byte through the bandwidth throttle.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from kluis import __version__
from kluis.agent.throttle import ThrottledTransport, TokenBucket
from kluis.catalog import KluisError

API = "/api/v1"
USER_AGENT = f"kluis-agent/{__version__}"


def redact(url: str) -> str:
    """A URL without its password (proxy URLs may carry credentials)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def fingerprint_of(der: bytes) -> str:
    """The fingerprint format of credentials files: ``sha256:<hex of the DER certificate>``."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def env_proxy(url: str) -> str | None:
    """The proxy the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) sets for ``url``."""
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


@dataclass(frozen=True)
class Endpoint:
    """How to reach one vault: its URL, proxy and pinned certificate."""

    url: str
    proxy: str | None = None
    tls_fingerprint: str | None = None
    ca_pem: str | None = None
    timeout: float = 30.0

    @property
    def host(self) -> str:
        """The vault's host name or address."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The vault's TCP port."""
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def https(self) -> bool:
        """Whether the vault speaks TLS."""
        return urlsplit(self.url).scheme == "https"

    def effective_proxy(self) -> str | None:
        """The configured proxy, else the environment's."""
        return self.proxy or env_proxy(self.url)

    def ssl_context(self) -> ssl.SSLContext:
        """A context trusting the vault's own certificate when one is pinned, else the system's CAs."""
        ctx = ssl.create_default_context(cadata=self.ca_pem) if self.ca_pem else ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def check_pin(self, der: bytes | None) -> None:
        """100050 (TLS step) when the server's certificate is not the pinned one."""
        if not self.tls_fingerprint:
            return
        seen = fingerprint_of(der or b"")
        if seen.lower() != self.tls_fingerprint.lower():
            raise net_error(
                self,
                "TLS",
                f"the vault's certificate has fingerprint {seen}, but {self.tls_fingerprint} is pinned",
            )


def net_error(ep: Endpoint, stage: str, reason: str) -> KluisError:
    """ID 100050 naming the step that failed."""
    return KluisError("100050", url=ep.url, stage=stage, reason=reason)


def proxy_auth_error(proxy: str) -> KluisError:
    """The seeds' 407: the proxy wants credentials."""
    return KluisError("ProxyAuthenticationRequired", proxy=redact(proxy))


# -- the probe ---------------------------------------------------------------------------------


def _resolve(ep: Endpoint, host: str, port: int, what: str) -> list[Any]:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise net_error(
            ep, "DNS", f"the name of the {what} {host} does not resolve ({exc.strerror})"
        ) from None
    except UnicodeError:
        raise net_error(ep, "DNS", f"the name of the {what} {host!r} is not a valid host name") from None


def _connect(
    ep: Endpoint, infos: list[Any], host: str, port: int, what: str, timeout: float
) -> socket.socket:
    last: OSError | None = None
    for family, kind, proto, _name, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
            return sock
        except OSError as exc:
            last = exc
            sock.close()
    if isinstance(last, TimeoutError | socket.timeout):
        reason = (
            f"no answer from the {what} {host}:{port} within {timeout:.0f} s"
            " (a firewall may drop the packets)"
        )
    elif isinstance(last, ConnectionRefusedError):
        reason = (
            f"the {what} {host}:{port} refused the connection"
            " (nothing listens on that port, or a firewall rejects it)"
        )
    else:
        reason = f"the {what} {host}:{port} cannot be reached ({last.strerror if last else 'no address'})"
    raise net_error(ep, "TCP", reason)


def _proxy_headers(proxy: str) -> dict[str, str]:
    parts = urlsplit(proxy)
    if parts.username is None:
        return {}
    user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


def _tunnel(ep: Endpoint, sock: socket.socket, proxy: str, timeout: float) -> None:
    """HTTP CONNECT through the proxy to the vault (for HTTPS vaults)."""
    target = f"{ep.host}:{ep.port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{k}: {v}" for k, v in _proxy_headers(proxy).items()]
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = http.client.HTTPResponse(sock, method="CONNECT")
        response.begin()
    except (OSError, http.client.HTTPException) as exc:
        raise net_error(ep, "proxy", f"the proxy {redact(proxy)} broke off the tunnel ({exc})") from None
    if response.status == 407:
        raise proxy_auth_error(proxy)
    if response.status != 200:
        raise net_error(
            ep,
            "proxy",
            f"the proxy {redact(proxy)} refused the tunnel to {target}: {response.status} {response.reason}",
        )


def _tls(ep: Endpoint, sock: socket.socket) -> ssl.SSLSocket:
    ctx = ep.ssl_context()
    try:
        tls = ctx.wrap_socket(sock, server_hostname=ep.host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise net_error(ep, "TLS", f"the vault's certificate is not trusted: {exc.verify_message}") from None
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise net_error(ep, "TLS", f"the TLS handshake with {ep.host} failed: {exc}") from None
    ep.check_pin(tls.getpeercert(binary_form=True))
    return tls


def probe(ep: Endpoint, timeout: float = 10.0) -> dict[str, Any]:
    """Walk DNS, TCP, (proxy), TLS and HTTP to the vault; its ``/health`` answer on success.

    Raises 100050 naming the failing step, or ProxyAuthenticationRequired for a 407.
    """
    proxy = ep.effective_proxy()
    if proxy:
        pparts = urlsplit(proxy)
        host, port, what = pparts.hostname or "", pparts.port or 3128, "proxy"
    else:
        host, port, what = ep.host, ep.port, "vault"
    infos = _resolve(ep, host, port, what)
    sock: socket.socket = _connect(ep, infos, host, port, what, timeout)
    try:
        if proxy and ep.https:
            _tunnel(ep, sock, proxy, timeout)
        if ep.https:
            sock = _tls(ep, sock)
        conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)
        conn.sock = sock
        path = API + "/health"
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json", "Connection": "close"}
        if proxy and not ep.https:
            path = ep.url.rstrip("/") + path  # a forward proxy takes the absolute URL
            headers.update(_proxy_headers(proxy))
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read(64 * 1024)
        except (OSError, http.client.HTTPException) as exc:
            raise net_error(ep, "HTTP", f"the connection broke off before an answer came ({exc})") from None
        if response.status == 407 and proxy:
            raise proxy_auth_error(proxy)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if response.status != 200 or not isinstance(answer, dict) or "vault_id" not in answer:
            raise net_error(
                ep,
                "HTTP",
                f"{path} answered {response.status} {response.reason}, which is not a Kluis vault's answer",
            )
        return answer
    finally:
        sock.close()


# -- the HTTP client ---------------------------------------------------------------------------


def make_client(
    ep: Endpoint,
    token: str | None = None,
    *,
    buckets: tuple[TokenBucket, TokenBucket] | None = None,
    timeout: float | None = None,
) -> httpx.Client:
    """An httpx client for the vault (base URL without ``/api/v1``), pinned, proxied and throttled."""
    proxy = ep.effective_proxy()
    verify: ssl.SSLContext | bool = ep.ssl_context() if ep.https else True
    inner: httpx.BaseTransport = httpx.HTTPTransport(verify=verify, proxy=proxy, retries=0)
    transport = ThrottledTransport(inner, *buckets) if buckets else inner
    headers = {"User-Agent": USER_AGENT}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def pin(response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        tls = stream.get_extra_info("ssl_object") if stream is not None else None
        if tls is not None:
            ep.check_pin(tls.getpeercert(True))  # an SSLObject or the socket's: positional only

    hooks: dict[str, list[Any]] = {"response": [pin]} if ep.https and ep.tls_fingerprint else {}
    return httpx.Client(
        base_url=ep.url,
        transport=transport,
        headers=headers,
        timeout=timeout or ep.timeout,
        event_hooks=hooks,
        trust_env=False,
    )


def transport_error(ep: Endpoint, exc: httpx.TransportError) -> KluisError:
    """The catalog error for a failed request: 407, or 100050 with the failing step."""
    proxy = ep.effective_proxy()
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ProxyError):
        if "407" in text and proxy:
            return proxy_auth_error(proxy)
        return net_error(ep, "proxy", f"the proxy {redact(proxy or '?')} failed: {text}")
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return net_error(ep, "DNS", f"the name {ep.host} does not resolve ({cause.strerror})")
        if isinstance(cause, ssl.SSLError):
            return net_error(ep, "TLS", f"the TLS handshake with {ep.host} failed: {cause}")
        if isinstance(cause, ConnectionRefusedError):
            return net_error(ep, "TCP", f"{ep.host}:{ep.port} refused the connection")
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectTimeout):
        return net_error(ep, "TCP", f"no answer from {ep.host}:{ep.port} within the time limit")
    if isinstance(exc, httpx.ConnectError):
        if "Name or service not known" in text or "nodename nor servname" in text:
            return net_error(ep, "DNS", f"the name {ep.host} does not resolve ({text})")
        return net_error(ep, "TCP", f"{ep.host}:{ep.port} cannot be reached ({text})")
    return net_error(ep, "HTTP", f"the request broke off ({type(exc).__name__}: {text})")


def is_transfer_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a timeout while sending or awaiting data.

    A read or write that waited longer than the client's timeout on a connection that
    was made: the vault (or something on the way) took the connection but stopped
    answering. A connect that timed out, a refused connection, DNS or TLS are not this:
    those say the vault cannot be reached at all. Catalog errors built from httpx
    errors keep the original as their ``__context__`` (``raise ... from None`` hides it
    from tracebacks, not from the chain).
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (httpx.ReadTimeout, httpx.WriteTimeout)):
            return True
        if isinstance(cause, httpx.TransportError):
            return False  # the first transport error decides
        cause = cause.__cause__ or cause.__context__
    return False


def response_error(ep: Endpoint, response: httpx.Response) -> KluisError:
    """The catalog error a vault answered with (rebuilt from its code and parameters)."""
    proxy = ep.effective_proxy()
    if response.status_code == 407 and proxy:
        return proxy_auth_error(proxy)
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        try:
            return KluisError(str(body["code"]), detail=body.get("detail"), **(params or {}))
        except LookupError:
            return KluisError(
                "VaultUnexpectedResponse",
                url=str(response.request.url),
                status=response.status_code,
                detail=str(body.get("message", "")),
            )
    return KluisError("VaultUnexpectedResponse", url=str(response.request.url), status=response.status_code)
