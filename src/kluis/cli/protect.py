"""``kluis protect files``: enable protection of files and folders under a policy."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from kluis.catalog import KluisError
from kluis.cli.client import VaultClient
from kluis.cli.common import JsonOpt, MachineOpt, TokenOpt, VaultOpt, status_style, with_client
from kluis.cli.output import out, print_json

app = typer.Typer(help="Enable protection of files and folders.", no_args_is_help=True)


def item_name(paths: list[str]) -> str:
    """A default item name from its paths: the paths themselves, shortened to fit."""
    text = ", ".join(paths)
    return text if len(text) <= 200 else text[:197] + "..."


def absolute_paths(paths: list[str], *, local: bool) -> list[str]:
    """Paths as the agent needs them: absolute (relative ones only make sense on this machine)."""
    result = []
    for p in paths:
        if not p:
            # abspath("") is the current folder: an unset shell variable would protect it.
            raise KluisError("ValidationFailed", reason="an empty path names nothing to protect")
        if os.path.isabs(p):
            result.append(os.path.normpath(p))
        elif local:
            result.append(os.path.abspath(p))
        else:
            raise KluisError(
                "ValidationFailed", reason=f"{p!r} is relative; give absolute paths for another machine"
            )
    return result


def print_item(item: dict[str, Any], machine: dict[str, Any] | None = None) -> None:
    """An item's main facts, one per line."""
    out.print(f"[bold]{item['name']}[/] ({item['id']}) {status_style(item['state'])}")
    if machine is not None:
        out.print(f"  machine: {machine['hostname']} ({machine['id']})")
    spec = item.get("spec") or {}
    for p in spec.get("paths") or []:
        out.print(f"  path:    {p}")
    for e in spec.get("exclude") or []:
        out.print(f"  exclude: {e}")
    for d in spec.get("disks") or []:
        out.print(f"  disk:    {d}")


@app.command("files")
def files(
    paths: Annotated[list[str], typer.Argument(help="Files and folders to protect (absolute on --machine).")],
    policy: Annotated[str, typer.Option("--policy", "-p", help="Policy name or id.")],
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", "-e", help="Glob of paths to leave out, repeatable.")
    ] = None,
    machine: MachineOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Item name (default: the paths).")] = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Protect files and folders of a machine (this one by default) under a policy."""

    def body(client: VaultClient) -> None:
        target = client.target_machine(machine)
        local = machine is None
        clean = absolute_paths(paths, local=local)
        if local:
            missing = [p for p in clean if not os.path.lexists(p)]
            if missing:
                raise KluisError("BackupSourceMissing", path=missing[0], reason="no such file or directory")
        created = client.post(
            "/items",
            {
                "machine_id": target["id"],
                "name": name or item_name(clean),
                "kind": "files",
                "paths": clean,
                "exclude": exclude or [],
                "policy": policy,
            },
        )
        if as_json:
            print_json(created)
            return
        out.print("Protection enabled:")
        print_item(created, target)
        out.print(f"  policy:  {policy}")
        out.print(f"Back it up now with: kluis backup now {created['id'][:12]} --wait")

    with_client(body, vault, token, as_json)


# `kluis protect disks` lives in its own module and adds itself to this group.
import kluis.cli.disks  # noqa: E402,F401
