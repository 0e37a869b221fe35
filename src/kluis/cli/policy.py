"""``kluis policy``: backup policies (when backups run and how long recovery points stay)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from kluis.catalog import KluisError
from kluis.cli.client import VaultClient, seg
from kluis.cli.common import JsonOpt, TokenOpt, VaultOpt, print_table, short, table, when, with_client
from kluis.cli.output import out, print_json

app = typer.Typer(help="Backup policies: schedule and retention.", no_args_is_help=True)


def _json_option(text: str | None, what: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise KluisError("ValidationFailed", reason=f"--{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise KluisError("ValidationFailed", reason=f"--{what} must be a JSON object")
    return value


def build_schedule(
    kind: str,
    at: list[str],
    on: list[str],
    every: int | None,
    window_start: str | None,
    window_hours: int | None,
    timezone: str,
) -> dict[str, Any]:
    """The API's schedule object from the command's options (the vault validates the values)."""
    schedule: dict[str, Any] = {"kind": kind, "timezone": timezone}
    if kind in ("daily", "weekly"):
        schedule["times"] = at or ["02:00"]
        if kind == "weekly":
            if not on:
                raise KluisError(
                    "ValidationFailed", reason="a weekly schedule needs --on DAY (e.g. --on sun)"
                )
            schedule["weekdays"] = on
    elif kind == "hourly":
        schedule["interval_hours"] = every or 4
        schedule["window_start"] = window_start or "00:00"
        schedule["window_hours"] = window_hours or 24
    else:
        raise KluisError("ValidationFailed", reason="--schedule must be daily, weekly or hourly")
    return schedule


def build_retention(
    daily: int | None,
    weekly: int | None,
    monthly: int | None,
    yearly: int | None,
    weekday: str | None,
    instant_days: int | None,
) -> dict[str, Any]:
    """The API's retention object; monthly points fall on the last day of the month, yearly on 31 Dec."""
    rule: dict[str, Any] = {}
    if daily is None and weekly is None:
        daily = 30
    if daily is not None:
        rule["daily"] = daily
    if weekly is not None:
        rule["weekly"] = weekly
        if weekday:
            rule["weekly_weekday"] = weekday
    if monthly is not None:
        rule["monthly"] = monthly
        rule["monthly_day"] = "last"
    if yearly is not None:
        rule["yearly"] = yearly
        rule["yearly_month"] = 12
        rule["yearly_day"] = "last"
    if instant_days is not None:
        rule["instant_days"] = instant_days
    return rule


def describe_schedule(schedule: dict[str, Any]) -> str:
    """'daily 02:30', 'weekly sun,wed 22:00', 'every 4 h from 08:00 for 12 h' (+ time zone)."""
    kind = schedule.get("kind")
    zone = schedule.get("timezone", "UTC")
    times = ", ".join(schedule.get("times") or [])
    if kind == "daily":
        text = f"daily {times}"
    elif kind == "weekly":
        days = ",".join(str(d) for d in schedule.get("weekdays") or [])
        text = f"weekly {days} {times}"
    elif kind == "hourly":
        text = (
            f"every {schedule.get('interval_hours')} h from {schedule.get('window_start')}"
            f" for {schedule.get('window_hours')} h"
        )
    else:
        text = json.dumps(schedule)
    return f"{text} ({zone})"


def describe_retention(rule: dict[str, Any]) -> str:
    """'30 daily, 12 weekly, 6 monthly'."""
    parts = [f"{rule[k]} {k}" for k in ("daily", "weekly", "monthly", "yearly") if rule.get(k)]
    return ", ".join(parts) or json.dumps(rule)


def _show(policy: dict[str, Any]) -> None:
    out.print(f"[bold]{policy['name']}[/] ({policy['id']})")
    out.print(f"  schedule:  {describe_schedule(policy['schedule'])}")
    out.print(f"  retention: {describe_retention(policy['retention'])}")
    rule = policy["retention"]
    if rule.get("instant_days"):
        out.print(f"  instant recovery points (disks): {rule['instant_days']} days")
    if "items" in policy:
        out.print(f"  protected items: {policy['items']}")
    out.print(f"  created {when(policy.get('created_at'))}, changed {when(policy.get('updated_at'))}")


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Policy name.")],
    schedule_kind: Annotated[str, typer.Option("--schedule", help="daily, weekly or hourly.")] = "daily",
    at: Annotated[
        list[str] | None, typer.Option("--at", help="HH:MM a run starts (up to 3; default 02:00).")
    ] = None,
    on: Annotated[
        list[str] | None, typer.Option("--on", help="Weekly: day to run (mon..sun), repeatable.")
    ] = None,
    every: Annotated[int | None, typer.Option("--every", help="Hourly: 4, 6, 8 or 12 hours.")] = None,
    window_start: Annotated[
        str | None, typer.Option("--window-start", help="Hourly: HH:MM the window opens.")
    ] = None,
    window_hours: Annotated[int | None, typer.Option("--window-hours", help="Hourly: window length.")] = None,
    timezone: Annotated[str, typer.Option("--timezone", help="IANA time zone of the times.")] = "UTC",
    keep_daily: Annotated[
        int | None, typer.Option("--keep-daily", help="Days of daily points (default 30).")
    ] = None,
    keep_weekly: Annotated[int | None, typer.Option("--keep-weekly", help="Weekly points to keep.")] = None,
    weekly_day: Annotated[
        str | None, typer.Option("--weekly-day", help="Day whose point is the week's.")
    ] = None,
    keep_monthly: Annotated[
        int | None, typer.Option("--keep-monthly", help="Monthly points (last day).")
    ] = None,
    keep_yearly: Annotated[
        int | None, typer.Option("--keep-yearly", help="Yearly points (31 December).")
    ] = None,
    instant_days: Annotated[
        int | None, typer.Option("--instant-days", help="Disks: days of snapshots.")
    ] = None,
    schedule_json: Annotated[
        str | None, typer.Option("--schedule-json", help="The full schedule object.")
    ] = None,
    retention_json: Annotated[
        str | None, typer.Option("--retention-json", help="The full retention object.")
    ] = None,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a policy: when backups run, and which recovery points are kept how long."""

    def body(client: VaultClient) -> None:
        schedule = _json_option(schedule_json, "schedule-json") or build_schedule(
            schedule_kind, at or [], on or [], every, window_start, window_hours, timezone
        )
        retention = _json_option(retention_json, "retention-json") or build_retention(
            keep_daily, keep_weekly, keep_monthly, keep_yearly, weekly_day, instant_days
        )
        policy = client.post("/policies", {"name": name, "schedule": schedule, "retention": retention})
        if as_json:
            print_json(policy)
            return
        out.print(f"Created policy [bold]{policy['name']}[/].")
        _show(policy)

    with_client(body, vault, token, as_json)


@app.command("list")
def list_policies(vault: VaultOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """List policies with their schedule, retention and number of protected items."""

    def body(client: VaultClient) -> None:
        rows = client.get("/policies")
        if as_json:
            print_json(rows)
            return
        t = table("name", "id", "schedule", "retention", "items")
        for p in rows:
            t.add_row(
                p["name"],
                short(p["id"]),
                describe_schedule(p["schedule"]),
                describe_retention(p["retention"]),
                str(p.get("items", "")),
            )
        print_table(t)

    with_client(body, vault, token, as_json)


@app.command("show")
def show(
    policy: Annotated[str, typer.Argument(help="Policy name or id.")],
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one policy."""

    def body(client: VaultClient) -> None:
        found = client.get(f"/policies/{seg(policy)}")
        if as_json:
            print_json(found)
            return
        _show(found)

    with_client(body, vault, token, as_json)
