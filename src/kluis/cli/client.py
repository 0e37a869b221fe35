"""The vault API client of the ``kluis`` commands: which vault, which token, and errors.

Where the vault is and who you are comes from, in this order: the ``--vault`` and
``--token`` options, the ``KLUIS_VAULT_URL`` and ``KLUIS_TOKEN`` variables, then the
file ``kluis login`` writes (``~/.config/kluis/cli.toml``, or ``KLUIS_CLI_CONFIG``)::

    [vault]
    url = "https://backup-01.example:8400"
    token = "kluis_u_..."
    tls_fingerprint = "sha256:ab12..."   # optional: pin the vault's certificate
    ca_file = "/etc/kluis/vault-ca.pem"  # optional: trust this CA instead of the system's

On a machine registered with ``kluis agent register`` the vault URL and its pinned
certificate fingerprint default to the agent's.

With a pinned fingerprint the certificate chain is not checked; the SHA-256 of the
certificate the vault presents must equal the pin, checked during the handshake,
before the token is sent. Every error answer of the vault (JSON ``{code, message,
causes, actions, params}``) comes back as the same catalog error, rendered again
in the reader's language; failures to connect name the step that failed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import tomli_w

from kluis.catalog import KluisError
from kluis.catalog.entry import CatalogEntry

API = "/api/v1"
CONFIG_ENV = "KLUIS_CLI_CONFIG"
URL_ENV = "KLUIS_VAULT_URL"
TOKEN_ENV = "KLUIS_TOKEN"
DEFAULT_TIMEOUT = 30.0


def config_path() -> Path:
    """Where ``kluis login`` keeps its settings."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "kluis" / "cli.toml"


@dataclass
class Connection:
    """How to reach one vault as one user."""

    url: str
    token: str
    tls_fingerprint: str | None = None
    ca_file: str | None = None

    def to_toml(self) -> dict[str, Any]:
        """The ``[vault]`` table of the CLI configuration."""
        vault: dict[str, Any] = {"url": self.url, "token": self.token}
        if self.tls_fingerprint:
            vault["tls_fingerprint"] = self.tls_fingerprint
        if self.ca_file:
            vault["ca_file"] = self.ca_file
        return {"vault": vault}


def read_config(path: Path | None = None) -> dict[str, Any]:
    """The ``[vault]`` table of the CLI configuration; empty when there is no file."""
    path = path or config_path()
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KluisError("CliConfigInvalid", path=str(path), reason=str(exc)) from None
    vault = doc.get("vault", {})
    if not isinstance(vault, dict):
        raise KluisError("CliConfigInvalid", path=str(path), reason="[vault] is not a table")
    for key in ("url", "token", "tls_fingerprint", "ca_file"):
        if key in vault and not isinstance(vault[key], str):
            raise KluisError("CliConfigInvalid", path=str(path), reason=f"vault.{key} must be a string")
    return vault


def save_config(conn: Connection, path: Path | None = None) -> Path:
    """Write the CLI configuration atomically, readable by this user only (it holds the token)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(tomli_w.dumps(conn.to_toml()).encode())
    os.replace(tmp, path)
    return path


def agent_settings() -> dict[str, str]:
    """This machine's agent registration (vault URL, TLS pin, machine id and host name), if readable."""
    try:
        from kluis.agent.config import CONFIG_NAME, config_dir

        directory = config_dir()
        doc = tomllib.loads((directory / CONFIG_NAME).read_text())
    except Exception:  # not registered, not readable by this user, or no agent code: no default
        return {}
    vault, machine = doc.get("vault", {}), doc.get("machine", {})
    found = {k: vault[k] for k in ("url", "tls_fingerprint") if isinstance(vault.get(k), str)}
    for key in ("id", "hostname"):
        if isinstance(machine.get(key), str):
            found[f"machine_{key}"] = machine[key]
    scratch = doc.get("agent", {}).get("scratch")
    if isinstance(scratch, str):
        found["scratch"] = scratch
    ca = vault.get("tls_certificate")
    if isinstance(ca, str) and ca:
        found["ca_file"] = str(Path(ca) if Path(ca).is_absolute() else directory / ca)
    return found


def agent_vault() -> dict[str, str]:
    """The vault URL and TLS pin of this machine's agent, when it is registered and readable."""
    return {k: v for k, v in agent_settings().items() if k in ("url", "tls_fingerprint", "ca_file")}


def seg(value: str) -> str:
    """A name or id as one URL path segment."""
    return quote(value, safe="")


def resolve(vault: str | None = None, token: str | None = None) -> Connection:
    """The connection the options, the environment and the CLI configuration describe."""
    saved = read_config()
    agent = agent_vault() if not (vault or os.environ.get(URL_ENV) or saved.get("url")) else {}
    url = vault or os.environ.get(URL_ENV) or saved.get("url") or agent.get("url")
    tok = token or os.environ.get(TOKEN_ENV) or saved.get("token")
    missing = [name for name, value in (("the vault URL", url), ("the user token", tok)) if not value]
    if missing:
        raise KluisError("CliNotLoggedIn", missing=" and ".join(missing))
    assert url is not None and tok is not None
    # A pin belongs to the vault it was saved with; another URL on the command line drops it.
    same_vault = url.rstrip("/") == str(saved.get("url", "")).rstrip("/")
    pins = saved if same_vault else agent if url == agent.get("url") else {}
    return Connection(
        url=url.rstrip("/"),
        token=tok,
        tls_fingerprint=pins.get("tls_fingerprint"),
        ca_file=pins.get("ca_file"),
    )


# -- TLS -----------------------------------------------------------------------------------


def normalise_fingerprint(text: str) -> str:
    """``sha256:AB:12...`` or ``ab12...`` -> ``sha256:ab12...``; ValidationFailed when malformed."""
    hexpart = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise KluisError("ValidationFailed", reason=f"{text!r} is not a SHA-256 certificate fingerprint")
    return "sha256:" + hexpart


def pinned_context(fingerprint: str) -> ssl.SSLContext:
    """A TLS context that accepts exactly the certificate with this SHA-256 fingerprint.

    The check runs inside the handshake (before any request is sent), so a token never
    reaches a server that presents another certificate.
    """
    expected = normalise_fingerprint(fingerprint).removeprefix("sha256:")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # The pin replaces chain and host name checks: it is stronger than both.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    class PinnedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            der = self.getpeercert(binary_form=True) or b""
            got = hashlib.sha256(der).hexdigest()
            if not hmac.compare_digest(got, expected):
                raise ssl.SSLError(
                    f"the vault presented certificate sha256:{got}, not the pinned sha256:{expected}"
                )

    ctx.sslsocket_class = PinnedSocket
    return ctx


def tls_verify(conn: Connection) -> ssl.SSLContext | bool | str:
    if conn.tls_fingerprint:
        return pinned_context(conn.tls_fingerprint)
    if conn.ca_file:
        return ssl.create_default_context(cafile=conn.ca_file)
    return True


# -- errors --------------------------------------------------------------------------------


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


class RemoteError(KluisError):
    """An error whose code this CLI does not know (a newer vault): shown in the vault's words."""

    def __init__(self, body: dict[str, Any]) -> None:
        code = str(body.get("code") or "UnknownError")
        message = str(body.get("message") or code)
        Exception.__init__(self, message)
        self.entry = CatalogEntry(
            code=code,
            title=str(body.get("title") or code),
            message=_escape(message),
            causes=tuple(_escape(str(c)) for c in body.get("causes") or ()),
            actions=tuple(_escape(str(a)) for a in body.get("actions") or ()),
            exit_code=1,
            area="remote",
        )
        self.params = {}
        self.detail = None


def error_from_body(body: Any) -> KluisError | None:
    """The catalog error an error body (or a job's stored error) describes, if it is one."""
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        return None
    if not isinstance(body.get("params"), dict | None):
        body = {**body, "params": {}}
    try:
        return KluisError.from_dict(body)
    except LookupError:
        return RemoteError(body)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def transport_error(exc: httpx.TransportError, url: str) -> KluisError:
    """Which step of reaching the vault failed: name resolution, TCP, TLS, proxy or HTTP."""
    host = urlsplit(url).hostname or url
    chain = _chain(exc)
    for cause in chain:
        if isinstance(cause, socket.gaierror):
            return KluisError("VaultDnsResolutionFailed", host=host, reason=cause.strerror or str(cause))
        if isinstance(cause, ssl.SSLError | ssl.CertificateError):
            return KluisError("TlsHandshakeFailed", host=host, reason=str(cause))
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ProxyError):
        if "407" in text:
            proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or "the proxy"
            return KluisError("ProxyAuthenticationRequired", proxy=proxy)
        return KluisError("CliVaultUnreachable", url=url, stage="proxy", reason=text)
    if "name or service not known" in text.lower() or "temporary failure in name resolution" in text.lower():
        return KluisError("VaultDnsResolutionFailed", host=host, reason=text)
    if "ssl" in text.lower() or "certificate" in text.lower():
        return KluisError("TlsHandshakeFailed", host=host, reason=text)
    if isinstance(exc, httpx.ConnectTimeout):
        return KluisError("CliVaultUnreachable", url=url, stage="TCP connect", reason="timed out")
    if isinstance(exc, httpx.ConnectError):
        return KluisError("CliVaultUnreachable", url=url, stage="TCP connect", reason=text)
    if isinstance(exc, httpx.TimeoutException):
        return KluisError("CliVaultUnreachable", url=url, stage="HTTP", reason="no answer in time")
    return KluisError("CliVaultUnreachable", url=url, stage="HTTP", reason=text)


# -- the client ----------------------------------------------------------------------------


class VaultClient:
    """JSON requests to one vault's ``/api/v1`` as one user."""

    def __init__(self, conn: Connection, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.conn = conn
        self.url = conn.url
        self._http = httpx.Client(
            base_url=conn.url + API,
            headers={"Authorization": f"Bearer {conn.token}", "Accept": "application/json"},
            verify=tls_verify(conn),
            timeout=timeout,
        )

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection pool."""
        self._http.close()

    def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None
    ) -> Any:
        """One API call; the decoded JSON answer (None when empty), or the catalog error raised."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        full = self.url + API + path
        try:
            response = self._http.request(method, path, params=clean, json=json)
        except httpx.TransportError as exc:
            raise transport_error(exc, self.url) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            error = error_from_body(body)
            if error is None:
                raise KluisError("VaultUnexpectedResponse", url=full, status=response.status_code)
            raise error
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise KluisError("VaultUnexpectedResponse", url=full, status=response.status_code) from None

    def get(self, path: str, **params: Any) -> Any:
        """GET with query parameters (None values are left out)."""
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None) -> Any:
        """POST a JSON body."""
        return self.request("POST", path, json=json if json is not None else {})

    def patch(self, path: str, json: Any) -> Any:
        """PATCH a JSON body."""
        return self.request("PATCH", path, json=json)

    # -- names to ids ------------------------------------------------------------------

    def item(self, ref: str, machine: str | None = None) -> dict[str, Any]:
        """A protected item by id, unique id prefix, or name (on ``machine`` when names repeat)."""
        machine_id = self.machine(machine)["id"] if machine else None
        items = self.get("/items", machine_id=machine_id)
        return _pick(items, ref, "protected item", name_key="name", label=_item_label)

    def machine(self, ref: str) -> dict[str, Any]:
        """A machine by id, unique id prefix, or host name."""
        return _pick(
            self.get("/machines"), ref, "machine", name_key="hostname", label=lambda m: m["hostname"]
        )

    def target_machine(self, ref: str | None) -> dict[str, Any]:
        """The machine named by ``--machine``, else this one (its agent's registration, or its host name)."""
        if ref:
            return self.machine(ref)
        machine_id = agent_settings().get("machine_id")
        if machine_id:
            found: dict[str, Any] = self.get(f"/machines/{seg(machine_id)}")
            return found
        host = os.environ.get("KLUIS_AGENT_HOSTNAME") or socket.gethostname()
        try:
            return self.machine(host)
        except KluisError as exc:
            if exc.code != "ResourceNotFound":
                raise
        raise KluisError("CliMachineNotRegistered", host=host, url=self.url)

    def point(self, ref: str) -> dict[str, Any]:
        """A recovery point by id or unique id prefix."""
        if len(ref) >= 32:
            result: dict[str, Any] = self.get(f"/points/{seg(ref)}")
            return result
        return _pick(
            self.get("/points", state="", limit=5000), ref, "recovery point", name_key=None, label=None
        )


def _item_label(item: dict[str, Any]) -> str:
    return f"{item['name']} ({item['id']} on {item['machine_id']})"


def _pick(
    rows: list[dict[str, Any]],
    ref: str,
    kind: str,
    *,
    name_key: str | None,
    label: Any,
) -> dict[str, Any]:
    """The one row whose id, name or id prefix is ``ref``; ResourceNotFound or ValidationFailed."""
    for match in (
        [r for r in rows if r["id"] == ref],
        [r for r in rows if name_key and r.get(name_key) == ref],
        [r for r in rows if len(ref) >= 4 and str(r["id"]).startswith(ref)],
    ):
        if len(match) == 1:
            return match[0]
        if len(match) > 1:
            names = ", ".join(label(r) if label else r["id"] for r in match[:5])
            raise KluisError(
                "ValidationFailed", reason=f"{ref!r} matches {len(match)} of them ({names}); use the id"
            )
    raise KluisError("ResourceNotFound", kind=kind, name=ref)


def connect(vault: str | None = None, token: str | None = None) -> VaultClient:
    """A client for the vault the options, environment or CLI configuration name."""
    return VaultClient(resolve(vault, token))
