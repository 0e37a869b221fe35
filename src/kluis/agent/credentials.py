"""Reading a vault credentials file on the machine (the format is ``kluis.vault.credentials``'s).

The agent checks the file before it contacts anyone: its name ends in
``.vaultCredentials``, it is the vault's JSON with every field, its checksum matches,
and it has not expired (ID 34513 with the reason). This reader needs none of the
vault server's modules, so the agent starts quickly and runs without them.
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
class Credentials:
    """The parts of a credentials file the agent uses (the text goes to the vault as it is)."""

    path: Path
    text: str
    vault_id: str
    vault_name: str
    url: str
    tls_fingerprint: str | None
    tls_certificate: str | None
    expires_at: dt.datetime


def _invalid(path: Path, reason: str) -> KluisError:
    return KluisError("34513", path=str(path), reason=reason)


def _checksum(body: dict[str, Any]) -> str:
    clean = {k: v for k, v in body.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read(path: Path, now: dt.datetime | None = None) -> Credentials:
    """A checked credentials file; 34513 naming what is wrong with it."""
    if not path.name.endswith(EXTENSION):
        raise _invalid(path, f"the file name does not end in {EXTENSION}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not text"
        raise _invalid(path, f"it cannot be read ({reason})") from None
    try:
        body = json.loads(text)
    except ValueError:
        raise _invalid(path, "the file is damaged (not valid JSON)") from None
    if not isinstance(body, dict) or body.get("kind") != KIND:
        raise _invalid(path, "the file is damaged (not a Kluis vault credentials file)")
    missing = [f for f in (*FIELDS, "checksum") if f not in body]
    if missing:
        raise _invalid(path, f"the file is damaged (missing {', '.join(missing)})")
    if body["checksum"] != _checksum(body):
        raise _invalid(path, "the file is damaged (its checksum does not match)")
    try:
        expires = dt.datetime.fromisoformat(str(body["expires_at"]).replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(path, "the file is damaged (a date cannot be read)") from None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.UTC)
    if expires <= (now or dt.datetime.now(dt.UTC)):
        raise _invalid(path, f"it expired on {expires.astimezone(dt.UTC).isoformat(timespec='minutes')}")
    return Credentials(
        path=path,
        text=text,
        vault_id=str(body["vault_id"]),
        vault_name=str(body["vault_name"]),
        url=str(body["url"]).rstrip("/"),
        tls_fingerprint=body["tls_fingerprint"] or None,
        tls_certificate=body["tls_certificate"] or None,
        expires_at=expires,
    )
