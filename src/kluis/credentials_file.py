"""The vault credentials file format, shared by the vault (which issues and verifies it)
and the agent (which reads it before contacting anyone). No server libraries needed.

A credentials file ``<vault-name>.vaultCredentials`` is JSON::

    {"kind": "kluis-vault-credentials", "version": 1,
     "vault_id": "...", "vault_name": "...", "url": "https://vault:8400",
     "tls_fingerprint": "sha256:ab12..." | null, "tls_certificate": "-----BEGIN ..." | null,
     "secret": "...", "issued_at": "2026-...Z", "expires_at": "2026-...Z",
     "checksum": "<sha256 of the canonical JSON of every other field>"}

The secret is made once, shown only in that file, and stored as a hash. Making a new
file supersedes every earlier one: only the newest unexpired file registers
machines (as in the seeds, seed 003; it may register several machines while valid).
Expired, superseded, damaged or renamed files are ID 34513; a file of another vault
is ID 100110.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kluis.catalog import KluisError

EXTENSION = ".vaultCredentials"
KIND = "kluis-vault-credentials"
FIELDS = (
    "vault_id",
    "vault_name",
    "url",
    "tls_fingerprint",
    "tls_certificate",
    "secret",
    "issued_at",
    "expires_at",
)


@dataclass(frozen=True)
class VaultCredentials:
    """The parsed content of a credentials file."""

    vault_id: str
    vault_name: str
    url: str
    tls_fingerprint: str | None
    tls_certificate: str | None
    secret: str
    issued_at: dt.datetime
    expires_at: dt.datetime

    def to_json(self) -> str:
        """The file's content, with its checksum."""
        body: dict[str, Any] = {"kind": KIND, "version": 1}
        body.update(
            vault_id=self.vault_id,
            vault_name=self.vault_name,
            url=self.url,
            tls_fingerprint=self.tls_fingerprint,
            tls_certificate=self.tls_certificate,
            secret=self.secret,
            issued_at=iso(self.issued_at),
            expires_at=iso(self.expires_at),
        )
        body["checksum"] = checksum(body)
        return json.dumps(body, indent=1) + "\n"


def iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def checksum(body: dict[str, Any]) -> str:
    clean = {k: v for k, v in body.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_name(vault_name: str) -> str:
    """The file name a vault's credentials are written under."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in vault_name) or "vault"
    return safe + EXTENSION


def invalid(path: str, reason: str) -> KluisError:
    return KluisError("34513", path=path, reason=reason)


def parse(text: str | bytes, name: str | None = None) -> VaultCredentials:
    """Read a credentials file's content; 34513 when it is damaged or misnamed.

    ``name`` is the file's name as the user gave it; a renamed extension is refused
    so that an old file kept under another name is not mistaken for a fresh one.
    """
    where = name or "(uploaded)"
    if name is not None and not name.endswith(EXTENSION):
        raise invalid(where, f"the file name does not end in {EXTENSION}")
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise invalid(where, "the file is damaged (not valid JSON)") from None
    if not isinstance(body, dict) or body.get("kind") != KIND:
        raise invalid(where, "the file is damaged (not a Kluis vault credentials file)")
    missing = [f for f in (*FIELDS, "checksum") if f not in body]
    if missing:
        raise invalid(where, f"the file is damaged (missing {', '.join(missing)})")
    if body.get("checksum") != checksum(body):
        raise invalid(where, "the file is damaged (its checksum does not match)")
    try:
        return VaultCredentials(
            vault_id=str(body["vault_id"]),
            vault_name=str(body["vault_name"]),
            url=str(body["url"]),
            tls_fingerprint=body["tls_fingerprint"],
            tls_certificate=body["tls_certificate"],
            secret=str(body["secret"]),
            issued_at=dt.datetime.fromisoformat(str(body["issued_at"])),
            expires_at=dt.datetime.fromisoformat(str(body["expires_at"])),
        )
    except (TypeError, ValueError):
        raise invalid(where, "the file is damaged (a date cannot be read)") from None


def read_file(path: str | Path) -> VaultCredentials:
    """Read and check a credentials file from disk (the agent's side of the checks)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise invalid(str(p), f"it cannot be read ({exc.strerror})") from None
    return parse(data, p.name)
