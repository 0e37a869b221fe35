"""Reading a passphrase from the file named by ``--passphrase-file`` (every command that has one)."""

from __future__ import annotations

from pathlib import Path

from kluis.catalog import KluisError


def read_passphrase_file(path: Path) -> str:
    """The passphrase held in ``path``, without its trailing newline.

    A file that is missing, unreadable or not text is a ``ValidationFailed`` naming it,
    never a traceback.
    """
    try:
        return path.read_text().rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        reason = f"the passphrase file {path} cannot be read ({why})"
        raise KluisError("ValidationFailed", reason=reason) from None
