"""``kluis points``: the recovery points of a protected item."""

from __future__ import annotations

from typing import Annotated

import typer

from kluis.cli.client import VaultClient
from kluis.cli.common import (
    JsonOpt,
    MachineOpt,
    TokenOpt,
    VaultOpt,
    print_table,
    short,
    size,
    status_style,
    table,
    when,
    with_client,
)
from kluis.cli.output import out, print_json

app = typer.Typer(help="Recovery points: what can be restored.", no_args_is_help=True)


@app.command("list")
def list_points(
    item: Annotated[str, typer.Argument(help="Item name, id or id prefix.")],
    all_states: Annotated[bool, typer.Option("--all", help="Include expired recovery points.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="How many, newest first.")] = 500,
    machine: MachineOpt = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List an item's recovery points, newest first."""

    def body(client: VaultClient) -> None:
        found = client.item(item, machine)
        rows = client.get(
            "/points", item_id=found["id"], state="" if all_states else "Available", limit=limit
        )
        if as_json:
            print_json(rows)
            return
        t = table(
            "id", "time", "trigger", "status", "size", "files", "kept until", "state", title=found["name"]
        )
        for p in rows:
            header = p.get("header") or {}
            t.add_row(
                short(p["id"]),
                when(p["time"]),
                p.get("trigger") or "",
                status_style(str(header.get("status", ""))),
                size(header.get("size", p.get("size"))),
                str(header.get("files", "")),
                when(p.get("retain_until")),
                status_style(p.get("state")),
            )
        print_table(t)
        if not rows:
            out.print(f"No recovery points yet; make one with: kluis backup now {found['id'][:12]} --wait")

    with_client(body, vault, token, as_json)
