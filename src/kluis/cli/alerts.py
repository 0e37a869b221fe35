"""``kluis alerts``: alerts the vault raised for failed backups and restores."""

from __future__ import annotations

from typing import Annotated

import typer

from kluis.cli.client import VaultClient, error_from_body, seg
from kluis.cli.common import (
    JsonOpt,
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

app = typer.Typer(help="Alerts raised by the vault (failed backups and restores).", no_args_is_help=True)


@app.command("list")
def list_alerts(
    status: Annotated[str | None, typer.Option("--status", help="Active or Resolved.")] = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the vault's alerts, newest first."""

    def body(client: VaultClient) -> None:
        rows = client.get("/alerts", status=status)
        if as_json:
            print_json(rows)
            return
        items = {i["id"]: i["name"] for i in client.get("/items")}
        t = table("id", "created", "status", "code", "item", "occurrences", "message")
        for a in rows:
            details = a.get("details") or {}
            error = error_from_body(details.get("error"))
            message = error.message if error else str((details.get("error") or {}).get("message", ""))
            t.add_row(
                short(a["id"]),
                when(a["created_at"]),
                status_style(a["status"]),
                a["code"],
                items.get(a.get("item_id") or "", short(a.get("item_id"))),
                str(details.get("occurrences", 1)),
                message,
            )
        print_table(t)

    with_client(body, vault, token, as_json)


@app.command("resolve")
def resolve_alert(
    alert: Annotated[str, typer.Argument(help="Alert id or id prefix.")],
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mark an alert resolved."""

    def body(client: VaultClient) -> None:
        alert_id = alert
        if len(alert) < 32:
            matches = [a["id"] for a in client.get("/alerts") if a["id"].startswith(alert)]
            alert_id = matches[0] if len(matches) == 1 else alert
        result = client.post(f"/alerts/{seg(alert_id)}/resolve")
        if as_json:
            print_json(result)
            return
        out.print(f"Alert {result['id']} ({result['code']}): {status_style(result['status'])}")

    with_client(body, vault, token, as_json)
