"""``kluis restore``: restore a recovery point (or some of its paths) through the agent."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from kluis.catalog import KluisError
from kluis.cli.client import VaultClient, seg
from kluis.cli.common import JsonOpt, TokenOpt, VaultOpt, with_client
from kluis.cli.jobs import finish, print_job, wait_for_job
from kluis.cli.output import out, print_json

app = typer.Typer()

CONFLICTS = ("overwrite", "skip", "copy")


def restore_request(
    point: dict[str, Any],
    paths: list[str],
    *,
    target: str | None,
    conflict: str,
    machine_id: str | None,
    local: bool,
) -> dict[str, Any]:
    """The body of POST /items/{item}/restore.

    Paths inside the point are absolute paths of the protected machine; relative ones
    are taken from the current directory when restoring on this machine. ``conflict``
    travels as is; ``overwrite`` is also set for vaults that only know that flag.
    """
    if conflict not in CONFLICTS:
        raise KluisError("ValidationFailed", reason=f"--conflict must be one of {', '.join(CONFLICTS)}")
    selected = []
    for p in paths:
        if not p.startswith("/"):
            if not local:
                raise KluisError(
                    "ValidationFailed", reason=f"path {p!r} must be absolute (as on the machine)"
                )
            p = os.path.abspath(p)
        selected.append(os.path.normpath(p))
    if target is not None and not target.startswith("/"):
        if not local:
            raise KluisError(
                "ValidationFailed", reason="--target must be an absolute path on the target machine"
            )
        target = os.path.abspath(target)
    body: dict[str, Any] = {
        "point_id": point["id"],
        "paths": selected,
        "conflict": conflict,
        "overwrite": conflict == "overwrite",
    }
    if target is not None:
        body["target_path"] = target
    if machine_id is not None:
        body["target_machine_id"] = machine_id
    return body


@app.command("restore")
def restore(
    point: Annotated[str, typer.Argument(help="Recovery point id or id prefix (see `kluis points list`).")],
    paths: Annotated[
        list[str] | None, typer.Argument(help="Only these files or folders (paths as on the machine).")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Restore into this folder instead of the original place."),
    ] = None,
    conflict: Annotated[
        str, typer.Option("--conflict", help="When a file exists: overwrite, skip, or copy (keep both).")
    ] = "overwrite",
    machine: Annotated[
        str | None,
        typer.Option(
            "--machine", "-m", help="Restore on this registered machine (default: the point's own)."
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job with a progress bar until it ends.")
    ] = False,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore a recovery point: to where the files were, on the same machine, unless told otherwise."""

    def body(client: VaultClient) -> None:
        found = client.point(point)
        if not found.get("item_id"):
            raise KluisError(
                "ValidationFailed", reason=f"recovery point {found['id']} belongs to no protected item"
            )
        target_machine = client.machine(machine)["id"] if machine else None
        request = restore_request(
            found,
            paths or [],
            target=target,
            conflict=conflict,
            machine_id=target_machine,
            local=machine is None,
        )
        job = client.post(f"/items/{seg(found['item_id'])}/restore", request)
        if not wait:
            if as_json:
                print_json(job)
                return
            where = request.get("target_path") or "the original location"
            out.print(f"Restore job [bold]{job['id']}[/] queued: recovery point {found['id']} to {where}.")
            out.print(f"Follow it with: kluis jobs show {job['id'][:12]}")
            return
        job = wait_for_job(client, job, show_progress=not as_json, label="Restoring")
        if not as_json:
            print_job(job, client)
        finish(job, as_json=as_json)

    with_client(body, vault, token, as_json)
