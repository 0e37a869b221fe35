"""The root of the ``kluis`` command. Each noun is a sub-app in its own module, added here."""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="kluis",
    help="Kluis: self-hosted backup for Linux machines and virtual machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# (module, attribute, command name). A group whose module is missing is simply not offered.
_GROUPS = [
    ("kluis.cli.repo", "app", "repo"),
    ("kluis.cli.vault", "app", "vault"),
    ("kluis.cli.agent", "app", "agent"),
    # Vault-facing commands (their connection comes from `kluis login`); a None name adds the
    # module's commands at the top level (kluis restore, kluis mount, ...).
    ("kluis.cli.login", "app", None),
    ("kluis.cli.policy", "app", "policy"),
    ("kluis.cli.protect", "app", "protect"),
    ("kluis.cli.items", "app", "items"),
    ("kluis.cli.backup", "app", "backup"),
    ("kluis.cli.jobs", "app", "jobs"),
    ("kluis.cli.points", "app", "points"),
    ("kluis.cli.extension", "app", "extension"),
    ("kluis.cli.restore", "app", None),
    ("kluis.cli.mount", "app", None),
    ("kluis.cli.protection", "app", None),
    ("kluis.cli.alerts", "app", "alerts"),
    ("kluis.cli.doctor", "app", None),
]


def _wanted() -> list[tuple[str, str, str | None]]:
    """Only the group a command line names, when it names one.

    Importing every group pulls in the vault server's libraries; a backup run through
    ``kluis repo`` or ``kluis agent`` should not carry them in memory.
    """
    named = [g for g in _GROUPS if g[2] is not None and len(sys.argv) > 1 and sys.argv[1] == g[2]]
    return named or _GROUPS


for _module, _attr, _name in _wanted():
    try:
        _sub = getattr(importlib.import_module(_module), _attr)
    except ModuleNotFoundError as exc:
        if exc.name != _module:
            raise
        continue
    app.add_typer(_sub, name=_name)


def main() -> None:
    """Entry point for ``python -m kluis``."""
    app()
