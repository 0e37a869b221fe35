"""The agent's calls to the vault API: registration, heartbeat, work queue, job reports.

Errors come back as catalog errors: what the vault answered (rebuilt from its code and
parameters), ProxyAuthenticationRequired for a proxy's 407, or 100050 naming the
step (DNS, TCP, TLS, HTTP) that failed. Calls that are safe to repeat retry network
failures and 502/503/504 with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from kluis.agent.config import AgentConfig
from kluis.agent.net import API, Endpoint, make_client, response_error, transport_error
from kluis.catalog import KluisError

log = logging.getLogger("kluis.agent")
RETRY_STATUS = (502, 503, 504)
NETWORK_CODES = ("100050", "ProxyAuthenticationRequired", "VaultUnexpectedResponse", "TlsHandshakeFailed")


def is_network_error(exc: KluisError) -> bool:
    """Whether an error means the vault could not be reached (worth retrying later)."""
    if exc.code == "VaultUnexpectedResponse":
        return exc.params.get("status") in RETRY_STATUS
    return exc.code in NETWORK_CODES


class VaultClient:
    """JSON calls to one vault, as a machine (with its token) or anonymously (registration)."""

    def __init__(self, endpoint: Endpoint, token: str | None = None) -> None:
        self.endpoint = endpoint
        self.http = make_client(endpoint, token)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        retries: int = 0,
        backoff: float = 0.5,
        stop: Callable[[], bool] | None = None,
    ) -> Any:
        """One API call; the decoded JSON answer (None for an empty body)."""
        delay = backoff
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.http.request(
                    method,
                    API + path,
                    json=json,
                    params=params,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                error = transport_error(self.endpoint, exc)
            else:
                if response.status_code < 300:
                    return response.json() if response.content else None
                error = response_error(self.endpoint, response)
                if response.status_code not in RETRY_STATUS:
                    raise error
            if attempt > retries or (stop is not None and stop()):
                raise error
            log.info("vault call %s %s failed (%s); retrying in %.1f s", method, path, error.code, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)

    # -- registration (no token) ------------------------------------------------------------

    def registration_keys(
        self, credentials: str, credentials_name: str, hostname: str, machine_id: str | None
    ) -> list[dict[str, Any]]:
        """Wrapped key sets of an existing registration ([] when the vault knows no such machine)."""
        body = {
            "credentials": credentials,
            "credentials_name": credentials_name,
            "hostname": hostname,
            "machine_id": machine_id,
        }
        try:
            answer = self.call("POST", "/machines/register/keys", json=body, retries=2)
        except KluisError as exc:
            if exc.code == "ResourceNotFound" and exc.params.get("kind") == "machine":
                return []
            raise
        return list(answer or [])

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        """Register (or re-register) the machine; its id and token."""
        answer: dict[str, Any] = self.call("POST", "/machines/register", json=body, retries=2)
        return answer

    # -- the machine's own calls --------------------------------------------------------------

    def heartbeat(self, machine_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Report status; the vault's answer (interval, latest agent version)."""
        answer: dict[str, Any] = self.call("POST", f"/machines/{machine_id}/heartbeat", json=body, timeout=30)
        return answer

    def work(self, machine_id: str, wait: float) -> dict[str, Any]:
        """Long-poll for jobs to run and jobs to cancel."""
        answer: dict[str, Any] = self.call(
            "GET", f"/machines/{machine_id}/work", params={"wait": wait}, timeout=wait + 30
        )
        return answer

    def key_sets(self, machine_id: str) -> list[dict[str, Any]]:
        """The machine's wrapped key sets as the vault holds them."""
        return list(self.call("GET", f"/machines/{machine_id}/keys", retries=3) or [])

    def progress(self, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Report progress; the answer says whether to stop."""
        answer: dict[str, Any] = self.call("POST", f"/jobs/{job_id}/progress", json=body, timeout=30)
        return answer

    def result(self, job_id: str, body: dict[str, Any], *, retries: int = 12) -> dict[str, Any]:
        """Report how a job ended (retried: a lost result would leave the job hanging)."""
        answer: dict[str, Any] = self.call(
            "POST", f"/jobs/{job_id}/result", json=body, retries=retries, backoff=1.0
        )
        return answer


def endpoint_of(cfg: AgentConfig) -> Endpoint:
    """How to reach the vault of a registered agent (pinned certificate read from the config dir)."""
    ca_pem: str | None = None
    ca_path = cfg.ca_path
    if ca_path is not None:
        try:
            ca_pem = ca_path.read_text()
        except OSError as exc:
            raise KluisError(
                "AgentConfigInvalid",
                path=str(ca_path),
                reason=f"the vault's certificate cannot be read ({exc})",
            ) from None
    return Endpoint(url=cfg.vault_url, proxy=cfg.proxy, tls_fingerprint=cfg.tls_fingerprint, ca_pem=ca_pem)


def session_client(cfg: AgentConfig) -> VaultClient:
    """A client acting as the registered machine."""
    return VaultClient(endpoint_of(cfg), cfg.token)
