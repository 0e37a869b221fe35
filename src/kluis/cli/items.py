"""``kluis items``: the protected items of the vault."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kluis.cli.client import VaultClient, seg
from kluis.cli.common import (
    JsonOpt,
    MachineOpt,
    TokenOpt,
    VaultOpt,
    print_table,
    short,
    status_style,
    table,
    when,
    with_client,
)
from kluis.cli.output import out, print_json
from kluis.cli.protect import print_item

app = typer.Typer(help="Protected items: what is backed up, where, under which policy.", no_args_is_help=True)


def names(client: VaultClient) -> tuple[dict[str, str], dict[str, str]]:
    """Machine host names and policy names by id, for tables."""
    machines = {m["id"]: m["hostname"] for m in client.get("/machines")}
    policies = {p["id"]: p["name"] for p in client.get("/policies")}
    return machines, policies


@app.command("list")
def list_items(
    machine: MachineOpt = None,
    state: Annotated[
        str | None, typer.Option("--state", help="Protected, ProtectionStopped or SoftDeleted.")
    ] = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List protected items with their state and last backup."""

    def body(client: VaultClient) -> None:
        machine_id = client.machine(machine)["id"] if machine else None
        rows: list[dict[str, Any]] = client.get("/items", machine_id=machine_id, state=state)
        if as_json:
            print_json(rows)
            return
        hosts, policies = names(client)
        t = table("name", "id", "machine", "kind", "state", "policy", "last backup", "result")
        for i in rows:
            t.add_row(
                i["name"],
                short(i["id"]),
                hosts.get(i["machine_id"], short(i["machine_id"])),
                i["kind"],
                status_style(i["state"]),
                policies.get(i.get("policy_id") or "", short(i.get("policy_id"))),
                when(i.get("last_backup_at")),
                status_style(i.get("last_backup_status")),
            )
        print_table(t)

    with_client(body, vault, token, as_json)


@app.command("show")
def show(
    item: Annotated[str, typer.Argument(help="Item name, id or id prefix.")],
    machine: MachineOpt = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one protected item."""

    def body(client: VaultClient) -> None:
        found = client.item(item, machine)
        if as_json:
            print_json(found)
            return
        hosts, policies = names(client)
        print_item(found)
        out.print(f"  machine: {hosts.get(found['machine_id'], found['machine_id'])}")
        out.print(f"  policy:  {policies.get(found.get('policy_id') or '', found.get('policy_id') or '-')}")
        last = when(found.get("last_backup_at")) or "never"
        out.print(f"  last backup: {last} {found.get('last_backup_status') or ''}")
        if found.get("purge_after"):
            out.print(f"  [red]data deleted for good after {when(found['purge_after'])}[/] (kluis undelete)")

    with_client(body, vault, token, as_json)


@app.command("set-policy")
def set_policy(
    item: Annotated[str, typer.Argument(help="Item name, id or id prefix.")],
    policy: Annotated[str, typer.Option("--policy", "-p", help="Policy name or id to move the item to.")],
    machine: MachineOpt = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move a protected item to another policy; its next backup follows the new schedule."""

    def body(client: VaultClient) -> None:
        found = client.item(item, machine)
        result = client.patch(f"/items/{seg(found['id'])}", {"policy": policy})
        if as_json:
            print_json(result)
            return
        print_item(result)
        out.print(f"  policy:  {policy}")

    with_client(body, vault, token, as_json)
