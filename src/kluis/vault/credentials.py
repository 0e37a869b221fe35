"""Vault credentials files: what a machine needs to register, valid for 10 days.

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
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.vault.config import VaultConfig
from kluis.vault.db.models import RegistrationSecret
from kluis.vault.db.types import utcnow

EXTENSION = ".vaultCredentials"
KIND = "kluis-vault-credentials"
VALID_FOR = dt.timedelta(days=10)
_FIELDS = (
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
            issued_at=_iso(self.issued_at),
            expires_at=_iso(self.expires_at),
        )
        body["checksum"] = _checksum(body)
        return json.dumps(body, indent=1) + "\n"


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _checksum(body: dict[str, Any]) -> str:
    clean = {k: v for k, v in body.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_name(vault_name: str) -> str:
    """The file name a vault's credentials are written under."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in vault_name) or "vault"
    return safe + EXTENSION


def tls_fingerprint(cert_path: str | Path) -> tuple[str, str]:
    """SHA-256 fingerprint and PEM text of the vault's TLS certificate."""
    pem = Path(cert_path).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    return f"sha256:{digest}", pem.decode()


def _invalid(path: str, reason: str) -> KluisError:
    return KluisError("34513", path=path, reason=reason)


def parse(text: str | bytes, name: str | None = None) -> VaultCredentials:
    """Read a credentials file's content; 34513 when it is damaged or misnamed.

    ``name`` is the file's name as the user gave it; a renamed extension is refused
    so that an old file kept under another name is not mistaken for a fresh one.
    """
    where = name or "(uploaded)"
    if name is not None and not name.endswith(EXTENSION):
        raise _invalid(where, f"the file name does not end in {EXTENSION}")
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise _invalid(where, "the file is damaged (not valid JSON)") from None
    if not isinstance(body, dict) or body.get("kind") != KIND:
        raise _invalid(where, "the file is damaged (not a Kluis vault credentials file)")
    missing = [f for f in (*_FIELDS, "checksum") if f not in body]
    if missing:
        raise _invalid(where, f"the file is damaged (missing {', '.join(missing)})")
    if body.get("checksum") != _checksum(body):
        raise _invalid(where, "the file is damaged (its checksum does not match)")
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
        raise _invalid(where, "the file is damaged (a date cannot be read)") from None


def read_file(path: str | Path) -> VaultCredentials:
    """Read and check a credentials file from disk (the agent's side of the checks)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise _invalid(str(p), f"it cannot be read ({exc.strerror})") from None
    return parse(data, p.name)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(
    session: Session, config: VaultConfig, *, created_by: str, now: dt.datetime | None = None
) -> VaultCredentials:
    """Make a new credentials file; every earlier one stops being valid."""
    now = now or utcnow()
    secret = secrets.token_urlsafe(32)
    fingerprint: str | None = None
    cert_pem: str | None = None
    if config.tls_cert:
        fingerprint, cert_pem = tls_fingerprint(config.tls_cert)
    session.add(
        RegistrationSecret(
            secret_hash=_hash(secret), created_at=now, expires_at=now + VALID_FOR, created_by=created_by
        )
    )
    return VaultCredentials(
        vault_id=config.vault_id,
        vault_name=config.vault_name,
        url=config.url,
        tls_fingerprint=fingerprint,
        tls_certificate=cert_pem,
        secret=secret,
        issued_at=now,
        expires_at=now + VALID_FOR,
    )


def verify(session: Session, config: VaultConfig, creds: VaultCredentials, name: str | None = None) -> None:
    """Check presented credentials against this vault: 100110 for another vault, else 34513."""
    where = name or "(uploaded)"
    if creds.vault_id != config.vault_id:
        raise KluisError(
            "100110",
            path=where,
            file_vault=f"{creds.vault_name} ({creds.vault_id})",
            machine_vault=f"{config.vault_name} ({config.vault_id})",
        )
    row = session.scalar(
        select(RegistrationSecret).where(RegistrationSecret.secret_hash == _hash(creds.secret))
    )
    if row is None:
        raise _invalid(where, "this vault never issued it")
    newest = session.scalar(
        select(RegistrationSecret).order_by(RegistrationSecret.created_at.desc()).limit(1)
    )
    if newest is not None and newest.id != row.id:
        raise _invalid(where, f"a newer credentials file was made on {_iso(newest.created_at)}")
    if row.expires_at <= utcnow():
        raise _invalid(where, f"it expired on {_iso(row.expires_at)}")
