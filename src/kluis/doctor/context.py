"""What the machine checks share: the agent's configuration, its status file, and one view of the vault.

The configuration is read once (a check that needs it and finds none is skipped,
naming the ``agent-config`` check that reports why). The vault is asked once per
question and the answers are shared: the step-by-step connection probe, ``/me``
with the machine's token (with the vault's ``Date`` header and when it was asked),
and the machine's wrapped key sets.

The places are the agent's own: extensions in ``SCRATCH/extensions`` (``Layout``), restore
point collections in ``SCRATCH/instant-points`` (``disk_runner.instant_root``), and the
``[extensions] enable`` switch of agent.toml, which ``AgentConfig`` does not carry.
"""

from __future__ import annotations

import email.utils
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kluis.agent.config import CONFIG_NAME, AgentConfig, current_hostname
from kluis.agent.scratch import Layout
from kluis.agent.state import read_state
from kluis.catalog import KluisError
from kluis.doctor.framework import NotApplicable

VAULT_TIMEOUT = 10.0


@dataclass
class VaultAnswer:
    """One HTTP exchange with the vault: the JSON, the vault's clock, and when it was asked."""

    status: int
    body: Any
    date: float | None  # the vault's Date header (seconds since the epoch)
    sent: float
    received: float
    error: KluisError | None = None


@dataclass
class MachineContext:
    """The machine under examination."""

    config_dir: Path
    hostname_override: str | None = None
    now: float = field(default_factory=time.time)
    _cfg: AgentConfig | None = field(default=None, init=False)
    _cfg_error: KluisError | None = field(default=None, init=False)
    _doc: dict[str, Any] = field(default_factory=dict, init=False)
    _cache: dict[str, Any] = field(default_factory=dict, init=False)
    _http: httpx.Client | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        try:
            self._cfg = AgentConfig.load(self.config_dir)
        except KluisError as exc:
            self._cfg_error = exc
            return
        try:
            self._doc = tomllib.loads(self.config_path.read_text())
        except (OSError, tomllib.TOMLDecodeError):  # AgentConfig.load just read it
            self._doc = {}

    def close(self) -> None:
        """Close the connection to the vault."""
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- configuration --------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """agent.toml."""
        return self.config_dir / CONFIG_NAME

    @property
    def config_error(self) -> KluisError | None:
        """Why the configuration cannot be used (None when it loaded)."""
        return self._cfg_error

    @property
    def cfg(self) -> AgentConfig:
        """The agent's configuration; NotApplicable when there is none to use."""
        if self._cfg is None:
            code = self._cfg_error.code if self._cfg_error else "AgentNotRegistered"
            raise NotApplicable(f"the agent configuration cannot be used ({code}; see agent-config)")
        return self._cfg

    def section(self, name: str) -> dict[str, Any]:
        """A section of agent.toml as written (also the ones AgentConfig does not know)."""
        value = self._doc.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def machine(self) -> str:
        """The machine's registered name."""
        return self.cfg.hostname

    @property
    def current_hostname(self) -> str:
        """This machine's host name now."""
        return current_hostname(self.hostname_override)

    @property
    def layout(self) -> Layout:
        """The scratch folder's layout."""
        return Layout(self.cfg.scratch)

    def state(self) -> dict[str, Any]:
        """The daemon's status file, read fresh."""
        return read_state(self.layout.state)

    @property
    def extensions_dir(self) -> Path:
        """Where the agent installs extensions."""
        return self.layout.extensions

    @property
    def extensions_enabled(self) -> bool:
        """``[extensions] enable``, read as the agent reads it."""
        from kluis.agent.disk_runner import extensions_enabled

        return extensions_enabled(self.config_path)

    @property
    def instant_points_dir(self) -> Path:
        """Where the agent keeps the restore point collections."""
        from kluis.agent.disk_runner import instant_root

        return instant_root(self.cfg.scratch)

    # -- the vault ------------------------------------------------------------------------

    def endpoint(self) -> Any:
        """How the agent reaches its vault (AgentConfigInvalid when the pinned certificate is unreadable)."""
        if "endpoint" not in self._cache:
            from kluis.agent.client import endpoint_of

            self._cache["endpoint"] = endpoint_of(self.cfg)
        return self._cache["endpoint"]

    def probe(self) -> tuple[dict[str, Any] | None, KluisError | None]:
        """The agent's step-by-step probe (DNS, TCP, proxy, TLS, HTTP), run once."""
        if "probe" not in self._cache:
            from kluis.agent.net import probe

            try:
                self._cache["probe"] = (probe(self.endpoint(), timeout=VAULT_TIMEOUT), None)
            except KluisError as exc:
                self._cache["probe"] = (None, exc)
        result: tuple[dict[str, Any] | None, KluisError | None] = self._cache["probe"]
        return result

    def _client(self) -> httpx.Client:
        if self._http is None:
            from kluis.agent.net import make_client

            self._http = make_client(self.endpoint(), self.cfg.token, timeout=VAULT_TIMEOUT)
        return self._http

    def ask(self, path: str) -> VaultAnswer:
        """GET ``/api/v1{path}`` as the machine, once per path; transport failures are in ``error``."""
        key = f"GET {path}"
        if key in self._cache:
            cached: VaultAnswer = self._cache[key]
            return cached
        from kluis.agent.net import API, response_error, transport_error

        sent = time.time()
        try:
            response = self._client().get(API + path)
        except httpx.TransportError as exc:
            answer = VaultAnswer(0, None, None, sent, time.time(), transport_error(self.endpoint(), exc))
        except KluisError as exc:  # the pinned certificate did not match
            answer = VaultAnswer(0, None, None, sent, time.time(), exc)
        else:
            received = time.time()
            date = _parse_date(response.headers.get("date"))
            error = None if response.status_code < 300 else response_error(self.endpoint(), response)
            try:
                body = response.json() if response.content else None
            except ValueError:
                body = None
            answer = VaultAnswer(response.status_code, body, date, sent, received, error)
        self._cache[key] = answer
        return answer

    def download(self, path: str) -> bytes:
        """GET ``/api/v1{path}`` as the machine and return the body; the catalog error when it fails."""
        from kluis.agent.net import API, response_error, transport_error

        try:
            response = self._client().get(API + path)
        except httpx.TransportError as exc:
            raise transport_error(self.endpoint(), exc) from None
        if response.status_code >= 300:
            raise response_error(self.endpoint(), response)
        return response.content


def _parse_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
