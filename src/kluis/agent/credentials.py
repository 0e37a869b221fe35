"""Reading a vault credentials file on the machine (the format is ``kluis.credentials_file``).

The agent checks the file before it contacts anyone: its name ends in
``.vaultCredentials``, it is the vault's JSON with every field, its checksum matches,
and it has not expired (ID 34513 with the reason). This reader needs none of the
vault server's modules, so the agent starts quickly and runs without them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from kluis.credentials_file import invalid, parse


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


def read(path: Path, now: dt.datetime | None = None) -> Credentials:
    """A checked credentials file; 34513 naming what is wrong with it (expired included)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not text"
        raise invalid(str(path), f"it cannot be read ({reason})") from None
    creds = parse(text, path.name)
    expires = creds.expires_at if creds.expires_at.tzinfo else creds.expires_at.replace(tzinfo=dt.UTC)
    if expires <= (now or dt.datetime.now(dt.UTC)):
        raise invalid(str(path), f"it expired on {expires.astimezone(dt.UTC).isoformat(timespec='minutes')}")
    return Credentials(
        path=path,
        text=text,
        vault_id=creds.vault_id,
        vault_name=creds.vault_name,
        url=creds.url.rstrip("/"),
        tls_fingerprint=creds.tls_fingerprint or None,
        tls_certificate=creds.tls_certificate or None,
        expires_at=expires,
    )
