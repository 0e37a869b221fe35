"""``kluis backup now``: an on-demand backup of a protected item, optionally followed to the end."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import typer

from kluis.catalog import KluisError
from kluis.cli.client import VaultClient, seg
from kluis.cli.common import JsonOpt, MachineOpt, TokenOpt, VaultOpt, size, status_style, when, with_client
from kluis.cli.jobs import finish, print_job, wait_for_job
from kluis.cli.output import out, print_json

app = typer.Typer(help="Run backups on demand.", no_args_is_help=True)


def parse_retain_until(text: str) -> dt.datetime:
    """``2030-06-30`` (kept through that day, local time) or an ISO date and time (local unless given)."""
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            moment = dt.datetime.combine(day, dt.time(23, 59, 59))
        else:
            moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise KluisError(
            "ValidationFailed",
            reason=f"--retain-until {text!r} is not a date (YYYY-MM-DD) or ISO date and time",
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the local time zone
    return moment


def point_of(client: VaultClient, job: dict[str, Any]) -> dict[str, Any] | None:
    """The recovery point a finished backup job made."""
    if not job.get("item_id"):
        return None
    for point in client.get("/points", item_id=job["item_id"], state="", limit=50):
        if point.get("job_id") == job["id"]:
            found: dict[str, Any] = point
            return found
    return None


@app.command("now")
def now(
    item: Annotated[str, typer.Argument(help="Item name, id or id prefix.")],
    retain_until: Annotated[
        str | None,
        typer.Option("--retain-until", help="Keep the recovery point until this date (default: 30 days)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job with a progress bar until it ends.")
    ] = False,
    machine: MachineOpt = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Back up a protected item now, outside its schedule."""

    def body(client: VaultClient) -> None:
        found = client.item(item, machine)
        request: dict[str, Any] = {}
        if retain_until:
            request["retain_until"] = parse_retain_until(retain_until).isoformat()
        job = client.post(f"/items/{seg(found['id'])}/backup", request)
        if not wait:
            if as_json:
                print_json(job)
                return
            out.print(f"Backup job [bold]{job['id']}[/] queued for {found['name']}.")
            out.print(f"Follow it with: kluis jobs show {job['id'][:12]}")
            return
        job = wait_for_job(client, job, show_progress=not as_json, label=f"Backing up {found['name']}")
        point = point_of(client, job) if job["status"] in ("Completed", "CompletedWithWarnings") else None
        if not as_json:
            print_job(job, client)
            if point is not None:
                out.print(
                    f"Recovery point [bold]{point['id']}[/] at {when(point['time'])}"
                    f" ({size(point.get('size'))}), kept until {when(point.get('retain_until')) or '-'}"
                )
            elif job["status"] == "Cancelled":
                out.print(f"The backup was {status_style('Cancelled')}; no recovery point was made.")
        finish(job, as_json=as_json, extra={"point": point})

    with_client(body, vault, token, as_json)
