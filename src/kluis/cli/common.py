"""What the vault-facing commands share: the --vault/--token/--json options and table formatting."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kluis.cli.client import VaultClient, connect
from kluis.cli.output import human_bytes, out, run_command

VaultOpt = Annotated[
    str | None,
    typer.Option(
        "--vault", help="Vault URL (default: KLUIS_VAULT_URL, then `kluis login`).", show_default=False
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", help="User token (default: KLUIS_TOKEN, then `kluis login`).", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
MachineOpt = Annotated[
    str | None, typer.Option("--machine", "-m", help="Machine host name or id.", show_default=False)
]

# Ids are 32 hex characters; tables show a prefix that every command accepts back.
SHORT_ID = 12


def with_client(
    body: Callable[[VaultClient], None], vault: str | None, token: str | None, as_json: bool
) -> None:
    """Run a command body with a connected client; catalog errors print and exit with their code."""

    def wrapped() -> None:
        with connect(vault, token) as client:
            body(client)

    run_command(wrapped, as_json=as_json)


def short(value: str | None) -> str:
    """An id as tables show it."""
    return (value or "")[:SHORT_ID]


def when(value: str | None) -> str:
    """An ISO time from the vault as local time to the minute; '' for none."""
    if not value:
        return ""
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def size(value: Any) -> str:
    """Bytes for people; '' when unknown."""
    if value is None or value == "":
        return ""
    try:
        return human_bytes(float(value))
    except (TypeError, ValueError):
        return str(value)


def table(*columns: str, title: str | None = None) -> Table:
    """A table in the commands' common style; the id column is never cut short."""
    t = Table(title=title, title_justify="left", header_style="bold")
    for name in columns:
        if name == "id":
            t.add_column(name, no_wrap=True, min_width=SHORT_ID)
        else:
            t.add_column(name)
    return t


def print_table(t: Table) -> None:
    """Print a table; piped into a file or program it may be wider than 80 columns."""
    if out.is_terminal:
        out.print(t)
    else:
        Console(width=200).print(t)


def status_style(status: str | None) -> str:
    """A job or backup status, coloured."""
    text = status or ""
    colour = {
        "Completed": "green",
        "CompletedWithWarnings": "yellow",
        "Failed": "red",
        "Cancelled": "magenta",
        "Cancelling": "magenta",
        "InProgress": "cyan",
        "Protected": "green",
        "ProtectionStopped": "yellow",
        "SoftDeleted": "red",
        "Active": "red",
        "Resolved": "green",
    }.get(text)
    return f"[{colour}]{text}[/]" if colour else text
