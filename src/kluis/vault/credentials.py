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
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.credentials_file import (
    EXTENSION,
    FIELDS,
    KIND,
    VaultCredentials,
    checksum,
    file_name,
    invalid,
    iso,
    parse,
    read_file,
)
from kluis.vault.config import VaultConfig
from kluis.vault.db.models import RegistrationSecret
from kluis.vault.db.types import utcnow

VALID_FOR = dt.timedelta(days=10)


def tls_fingerprint(cert_path: str | Path) -> tuple[str, str]:
    """SHA-256 fingerprint and PEM text of the vault's TLS certificate."""
    pem = Path(cert_path).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    return f"sha256:{digest}", pem.decode()


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
        raise invalid(where, "this vault never issued it")
    newest = session.scalar(
        select(RegistrationSecret).order_by(RegistrationSecret.created_at.desc()).limit(1)
    )
    if newest is not None and newest.id != row.id:
        raise invalid(where, f"a newer credentials file was made on {iso(newest.created_at)}")
    if row.expires_at <= utcnow():
        raise invalid(where, f"it expired on {iso(row.expires_at)}")


__all__ = [
    "EXTENSION",
    "FIELDS",
    "KIND",
    "VALID_FOR",
    "VaultCredentials",
    "checksum",
    "file_name",
    "issue",
    "parse",
    "read_file",
    "tls_fingerprint",
    "verify",
]
