"""``kluis stop-protection``, ``kluis undelete``, ``kluis resume-protection``: an item's protection state.

Stopping keeps every recovery point until protection resumes; with ``--delete-data``
the points are soft-deleted and stay recoverable (``kluis undelete``) for 14 days.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kluis.cli.client import VaultClient, seg
from kluis.cli.common import JsonOpt, MachineOpt, TokenOpt, VaultOpt, status_style, when, with_client
from kluis.cli.output import out, print_json

app = typer.Typer()

ItemArg = Annotated[str, typer.Argument(help="Item name, id or id prefix.")]


def _report(result: dict[str, Any], as_json: bool, what: str) -> None:
    if as_json:
        print_json(result)
        return
    out.print(f"{result['name']} ({result['id']}): {what}; now {status_style(result['state'])}.")
    if result.get("purge_after"):
        out.print(
            f"Its recovery points are deleted for good after {when(result['purge_after'])};"
            f" until then `kluis undelete {result['id'][:12]}` brings them back."
        )


@app.command("stop-protection")
def stop_protection(
    item: ItemArg,
    delete_data: Annotated[
        bool, typer.Option("--delete-data", help="Also delete the recovery points (recoverable for 14 days).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    machine: MachineOpt = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop scheduled backups of an item, keeping its recovery points (or deleting them)."""

    def body(client: VaultClient) -> None:
        found = client.item(item, machine)
        if delete_data and not yes and not as_json:
            typer.confirm(
                f"Delete the backup data of {found['name']}? It stays recoverable for 14 days.", abort=True
            )
        result = client.post(f"/items/{seg(found['id'])}/stop", {"delete_data": delete_data})
        _report(result, as_json, "protection stopped, data " + ("deleted" if delete_data else "kept"))

    with_client(body, vault, token, as_json)


@app.command("undelete")
def undelete(
    item: ItemArg,
    machine: MachineOpt = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bring back the soft-deleted recovery points of an item (protection stays stopped)."""

    def body(client: VaultClient) -> None:
        found = client.item(item, machine)
        result = client.post(f"/items/{seg(found['id'])}/undelete")
        _report(result, as_json, "data undeleted")
        if not as_json:
            out.print(f"Resume backups with: kluis resume-protection {result['id'][:12]}")

    with_client(body, vault, token, as_json)


@app.command("resume-protection")
def resume_protection(
    item: ItemArg,
    policy: Annotated[
        str | None, typer.Option("--policy", "-p", help="Policy to resume with (default: its last one).")
    ] = None,
    machine: MachineOpt = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Resume scheduled backups of a stopped item."""

    def body(client: VaultClient) -> None:
        found = client.item(item, machine)
        result = client.post(f"/items/{seg(found['id'])}/resume", {"policy": policy})
        _report(result, as_json, "protection resumed")

    with_client(body, vault, token, as_json)
