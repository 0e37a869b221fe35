"""A real vault server process for tests, and an HTTP agent that drives it like the agent does.

Nothing here stands in for vault code: the server is ``kluis vault serve`` in a
subprocess on a free loopback port, and ``Agent`` speaks the same HTTP API the real
agent uses. Repository objects are built with ``kluis.engine.format`` from random
bytes (the vault never decrypts, so random blob contents are as good as real ones).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import secrets
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kluis.engine.format import (
    IndexEntry,
    encode_index,
    encode_pack_trailer,
    encode_point,
    encode_refs,
    index_name,
    object_id,
    pack_name,
    point_name,
    refs_name,
)
from kluis.stores.vault import VaultStore, pinned_context
from kluis.vault import users
from kluis.vault.config import CONFIG_NAME, VaultConfig, new_config
from kluis.vault.db import Database, open_database
from tests.support._process import log_tail, spawn, stop
from tests.support.ports import free_port

# Test settings: a fast scheduler and short leases, so lease and job tests take seconds.
FAST = {
    "scheduler_interval": 0.3,
    "lease_ttl": 2.0,
    "heartbeat_interval": 2,
    "unresponsive_after": 2,
}


class VaultServer:
    """One vault: its data directory, database, and (when started) its server process."""

    def __init__(self, data: Path, db_url: str, *, name: str = "testvault", **overrides: Any) -> None:
        data.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.port = free_port()
        cfg = new_config(data, name, listen=f"127.0.0.1:{self.port}")
        cfg.db_url = db_url
        for key, value in {**FAST, **overrides}.items():
            setattr(cfg, key, value)
        cfg.validate()
        self.config: VaultConfig = cfg
        self.db: Database = open_database(db_url, cfg.vault_id)
        with self.db.write() as s:
            _, self.admin_token = users.add(s, "admin", "Admin")
        cfg.save(data / CONFIG_NAME)
        scheme = "https" if cfg.tls_cert else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        # With TLS, trust exactly the vault's certificate (as an agent pinning it does).
        self.verify: bool | ssl.SSLContext = True
        if cfg.tls_cert:
            self.verify = pinned_context(Path(cfg.tls_cert).read_text())
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data / "server.log"
        self._tokens: dict[str, str] = {}
        self._client: httpx.Client | None = None

    @classmethod
    def sharing(cls, other: VaultServer, data: Path) -> VaultServer:
        """A second process of the same vault: same id, database and store, its own port."""
        self = cls.__new__(cls)
        data.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.port = free_port()
        cfg = VaultConfig(**{f.name: getattr(other.config, f.name) for f in dataclasses.fields(VaultConfig)})
        cfg.listen = f"127.0.0.1:{self.port}"
        cfg.save(data / CONFIG_NAME)
        self.config = cfg
        self.db = open_database(cfg.db_url, cfg.vault_id)
        self.admin_token = other.admin_token
        self.url = f"http://127.0.0.1:{self.port}"
        self.verify = True
        self.process = None
        self.log = data / "server.log"
        self._tokens = dict(other._tokens)
        self._client = None
        return self

    # -- process ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> VaultServer:
        """Run ``kluis vault serve`` and wait until it answers."""
        args = [
            sys.executable,
            "-c",
            "from kluis.cli.main import app; app()",
            "vault",
            "serve",
            "--data",
            str(self.data),
            "--log-level",
            "warning",
        ]
        self.process = spawn(args, log=self.log, env=dict(os.environ), cwd=self.data)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"vault exited with {self.process.returncode}:\n{log_tail(self.log)}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1, verify=self.verify).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vault did not answer within {timeout} s:\n{log_tail(self.log)}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (clean shutdown: releases the scheduler lease)."""
        if self._client is not None:
            # An idle TLS connection would hold up the server's graceful shutdown.
            self._client.close()
            self._client = None
        if self.process is not None:
            stop(self.process)
            self.process = None

    def kill(self) -> None:
        """SIGKILL: the process dies without releasing anything."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        """Stop the server and close the test's own connections."""
        self.stop()
        self.db.dispose()
        if self._client is not None:
            self._client.close()

    # -- API -------------------------------------------------------------------------------

    def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        """One API request with a token (the admin's unless given; ``""`` for none)."""
        token = self.admin_token if token is None else token
        headers = dict(kwargs.pop("headers", {}) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self._client is None:
            # One client for all requests: a new one per request costs a TLS context each time.
            self._client = httpx.Client(base_url=self.url, timeout=60, verify=self.verify)
        return self._client.request(method, path, headers=headers, **kwargs)

    def ok(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        """A request that must succeed; its JSON."""
        response = self.request(method, path, token, **kwargs)
        assert response.status_code < 300, (response.status_code, response.text)
        return response.json() if response.content else None

    def token_for(self, role: str) -> str:
        """A user token of a role (one user per role, made once)."""
        if role not in self._tokens:
            body = self.ok("POST", "/api/v1/users", json={"name": f"user-{role.lower()}", "role": role})
            self._tokens[role] = body["token"]
        return self._tokens[role]

    def credentials(self) -> dict[str, Any]:
        """A fresh credentials file (its name and content)."""
        result: dict[str, Any] = self.ok("POST", "/api/v1/credentials")
        return result

    def policy(self, name: str | None = None, **changes: Any) -> dict[str, Any]:
        """A daily policy (02:30 Europe/Amsterdam, 30 days) unless told otherwise."""
        body = {
            "name": name or f"policy-{secrets.token_hex(4)}",
            "schedule": {"kind": "daily", "timezone": "Europe/Amsterdam", "times": ["02:30"]},
            "retention": {"daily": 30, "instant_days": 2},
        }
        body.update(changes)
        result: dict[str, Any] = self.ok("POST", "/api/v1/policies", json=body)
        return result

    def item(
        self, machine_id: str, policy_id: str, name: str | None = None, kind: str = "files"
    ) -> dict[str, Any]:
        """Enable protection of a files (or disks) item."""
        body: dict[str, Any] = {
            "machine_id": machine_id,
            "name": name or f"item-{secrets.token_hex(4)}",
            "kind": kind,
            "policy": policy_id,
        }
        if kind == "files":
            body["paths"] = ["/srv/data"]
        else:
            body["disks"] = [body["name"]]  # a VM of the item's name
        result: dict[str, Any] = self.ok("POST", "/api/v1/items", json=body)
        return result


# -- repository objects ------------------------------------------------------------------------


def make_pack(count: int = 3, size: int = 1000) -> tuple[bytes, bytes, list[IndexEntry]]:
    """A pack of ``count`` random blobs: (pack id, bytes, index entries)."""
    blobs = [(secrets.token_bytes(32), secrets.token_bytes(size + i)) for i in range(count)]
    body = b"".join(data for _, data in blobs)
    pack = body + encode_pack_trailer((bid, 0, 0, len(data), len(data)) for bid, data in blobs)
    pid = object_id(pack)
    entries, offset = [], 0
    for bid, data in blobs:
        entries.append(IndexEntry(bid, pid, 0, 0, offset, len(data), len(data)))
        offset += len(data)
    return pid, pack, entries


def make_index(entries: list[IndexEntry]) -> tuple[str, bytes]:
    """An index file: (its name, bytes)."""
    data = encode_index(entries)
    return index_name(object_id(data)), data


def make_point(
    refs: list[bytes], point_id: str | None = None, kind: str = "files"
) -> tuple[str, bytes, bytes]:
    """(point id, refs bytes, point bytes) for a point referencing ``refs``."""
    point_id = point_id or secrets.token_hex(16)
    header = {
        "id": point_id,
        "time": dt.datetime.now(dt.UTC).isoformat(),
        "kind": kind,
        "refs": len(refs),
        "size": 12345,
    }
    return point_id, encode_refs(refs), encode_point(header, secrets.token_bytes(64))


@dataclass
class Agent:
    """An agent's side of the API, over HTTP."""

    vault: VaultServer
    hostname: str = field(default_factory=lambda: f"host-{secrets.token_hex(4)}")
    fingerprint: str = field(default_factory=lambda: secrets.token_hex(16))
    # Stands in for MasterKeys.registration_proof() of the agent's keys.
    # (None: an older agent that sends no proof.)
    proof: str | None = field(default_factory=lambda: secrets.token_hex(32))
    machine_id: str = ""
    token: str = ""

    def register(self, creds: dict[str, Any] | None = None, **extra: Any) -> httpx.Response:
        """Register with a credentials file (a fresh one unless given)."""
        creds = creds or self.vault.credentials()
        body = {
            "hostname": self.hostname,
            "os": "Debian 12",
            "agent_version": extra.pop("agent_version", "0.1.0"),
            "key_fingerprint": self.fingerprint,
            "key_proof": self.proof,
            "key_set": {
                "id": "00aa11bb22cc33dd",
                "body": f'{{"version": 1, "fingerprint": "{self.fingerprint}"}}',
            },
            "credentials": creds["content"],
            "credentials_name": creds["file_name"],
            **extra,
        }
        response = self.vault.request("POST", "/api/v1/machines/register", token="", json=body)
        if response.status_code == 200:
            self.machine_id = response.json()["machine_id"]
            self.token = response.json()["token"]
        return response

    def registered(self) -> Agent:
        """Register and insist it worked."""
        response = self.register()
        assert response.status_code == 200, response.text
        return self

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request with the machine token."""
        return self.vault.request(method, path, token=self.token, **kwargs)

    def heartbeat(self, **changes: Any) -> httpx.Response:
        """Send a heartbeat (with this agent's host name unless changed)."""
        body = {
            "hostname": self.hostname,
            "agent_version": "0.1.0",
            "agent_status": "Ready",
            "extensions": [{"name": "snapshot", "version": "1.0", "state": "Enabled"}],
            **changes,
        }
        return self.call("POST", f"/api/v1/machines/{self.machine_id}/heartbeat", json=body)

    def work(self, wait: float = 0) -> dict[str, Any]:
        """Long-poll for work."""
        response = self.call("GET", f"/api/v1/machines/{self.machine_id}/work", params={"wait": wait})
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def progress(self, job_id: str, **body: Any) -> httpx.Response:
        """Report progress."""
        return self.call("POST", f"/api/v1/jobs/{job_id}/progress", json=body)

    def result(self, job_id: str, status: str, **body: Any) -> httpx.Response:
        """Report the end of a job."""
        return self.call("POST", f"/api/v1/jobs/{job_id}/result", json={"status": status, **body})

    def store(self, item_id: str | None = None, job_id: str | None = None) -> VaultStore:
        """This machine's repository as a Store."""
        return VaultStore(
            self.vault.url,
            self.machine_id,
            self.token,
            item_id=item_id,
            job_id=job_id,
            verify=self.vault.verify,
            retries=2,
            backoff=0.05,
        )

    def put(self, name: str, data: bytes, **params: str) -> httpx.Response:
        """Raw PUT of a repository object."""
        return self.call(
            "PUT", f"/api/v1/machines/{self.machine_id}/repo/objects/{name}", content=data, params=params
        )

    def backup(self, item_id: str | None = None, job_id: str | None = None, blobs: int = 3) -> str:
        """Upload a pack, its index, the reference list and a point: a complete backup."""
        pid, pack, entries = make_pack(blobs)
        iname, index = make_index(entries)
        point_id, refs, point = make_point([e.id for e in entries])
        params = {k: v for k, v in (("item", item_id), ("job", job_id)) if v}
        for name, data, extra in (
            (pack_name(pid), pack, {}),
            (iname, index, {}),
            (refs_name(point_id), refs, {}),
            (point_name(point_id), point, params),
        ):
            response = self.put(name, data, **extra)
            assert response.status_code == 200, (name, response.text)
        return point_id

    def run_backup(self, item_id: str) -> tuple[str, str]:
        """Take the item's queued backup job, upload a point for it and complete it."""
        work = self.work(wait=5)
        job = next(j for j in work["jobs"] if j["item"]["id"] == item_id)
        point_id = self.backup(item_id, job["id"])
        assert self.result(job["id"], "Completed").status_code == 200
        return job["id"], point_id
