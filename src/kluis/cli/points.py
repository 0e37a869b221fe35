"""``kluis points``: the recovery points of a protected item."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Annotated

import typer

from kluis.catalog import KluisError
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
from kluis.cli.output import console, out, print_json

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


# -- the restore point collection of a disks item on this machine (instant recovery points) ---


def _collection_root(config_dir: str | None) -> Path:
    from kluis.agent.config import AgentConfig
    from kluis.agent.config import config_dir as resolve
    from kluis.agent.disk_runner import instant_root

    return instant_root(AgentConfig.load(resolve(config_dir)).scratch)


def _print_warning(warning: KluisError) -> None:
    """A catalog warning on standard error: code, message and what to do (the exit code stays 0)."""
    from rich.markup import escape

    console.print(f"[bold yellow]{warning.code}[/]: {escape(warning.message)}")
    for action in warning.actions:
        console.print(f"  {escape(action)}")


@app.command("lock")
def lock(
    item: Annotated[str, typer.Argument(help="Item name, id or id prefix (a disks item of this machine).")],
    why: Annotated[
        str, typer.Option("--why", help="Why it is locked (shown to whoever meets the lock).")
    ] = "",
    config_dir: Annotated[str | None, typer.Option("--config-dir", envvar="KLUIS_AGENT_CONFIG_DIR")] = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Lock an item's restore point collection: instant points are not cleaned up while it holds."""
    from kluis.agent.extensions.snapshot import lock_collection

    def body(client: VaultClient) -> None:
        found = client.item(item)
        who = f"{getpass.getuser()}@{socket.gethostname()}"
        held = lock_collection(found["id"], who, why or "locked by hand", _collection_root(config_dir))
        if as_json:
            print_json({"item": found["id"], "locked": True, "by": held.who, "why": held.why})
            return
        out.print(f"Restore point collection of {found['name']} locked ({held.describe()}).")

    with_client(body, vault, token, as_json)


@app.command("unlock")
def unlock(
    item: Annotated[str, typer.Argument(help="Item name, id or id prefix (a disks item of this machine).")],
    config_dir: Annotated[str | None, typer.Option("--config-dir", envvar="KLUIS_AGENT_CONFIG_DIR")] = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove the lock; the next backup (or ``kluis points prune``) can clean up again."""
    from kluis.agent.extensions.snapshot import unlock_collection

    def body(client: VaultClient) -> None:
        found = client.item(item)
        removed = unlock_collection(found["id"], _collection_root(config_dir))
        if as_json:
            print_json({"item": found["id"], "unlocked": removed})
            return
        out.print(
            f"Restore point collection of {found['name']} " + ("unlocked." if removed else "was not locked.")
        )

    with_client(body, vault, token, as_json)


@app.command("prune")
def prune(
    item: Annotated[str, typer.Argument(help="Item name, id or id prefix (a disks item of this machine).")],
    time_limit: Annotated[
        float,
        typer.Option(
            "--time-limit",
            min=0,
            help="Stop deleting after this many seconds (at least one point is deleted; 0: one).",
        ),
    ] = 300.0,
    config_dir: Annotated[str | None, typer.Option("--config-dir", envvar="KLUIS_AGENT_CONFIG_DIR")] = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete the expired instant recovery points of an item's restore point collection.

    Only expired points go; a locked collection is refused (RestorePointCollectionLocked).
    When the time limit runs out first, the rest stay for the next run and the command
    warns with RestorePointCleanupIncomplete (exit code 0): run it again.
    """
    from kluis.agent.extensions.snapshot import RestorePointCollection

    def body(client: VaultClient) -> None:
        found = client.item(item)
        collection = RestorePointCollection(found["id"], _collection_root(config_dir))
        result = collection.prune(time_limit=time_limit)
        left = collection.points()
        warning = result.warning()
        if as_json:
            print_json(
                {
                    "item": found["id"],
                    "deleted": result.deleted,
                    "remaining": result.remaining,
                    "complete": result.complete,
                    "kept": len(left),
                    "seconds": round(result.seconds, 3),
                    "warnings": [warning.to_dict()] if warning is not None else [],
                }
            )
            return
        for snapshot_id in result.deleted:
            out.print(f"deleted {snapshot_id}")
        out.print(
            f"{len(result.deleted)} expired instant recovery points of {found['name']} deleted;"
            f" {len(left)} kept."
        )
        if warning is not None:
            _print_warning(warning)

    with_client(body, vault, token, as_json)
