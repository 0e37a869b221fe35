"""The root of the ``kluis`` command. Each noun is a sub-app in its own module, added here."""

from __future__ import annotations

import importlib

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
    ("kluis.cli.vault", "alerts_app", "alerts"),
]

for _module, _attr, _name in _GROUPS:
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
