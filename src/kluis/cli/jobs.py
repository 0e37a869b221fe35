"""``kluis jobs``: backup, restore and maintenance jobs; waiting for one with a progress bar."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from kluis.catalog import KluisError
from kluis.cli.client import VaultClient, error_from_body, seg
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

app = typer.Typer(help="Jobs: follow, inspect and cancel backups and restores.", no_args_is_help=True)

FINAL = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
# How many failed-file entries `jobs show` lists (all are in the failed-files log).
SHOW_WARNINGS = 20
# Polling starts fast (short jobs end in a second) and slows down for long ones.
POLL_FIRST = 0.1
POLL_MAX = 1.0


def find_job(client: VaultClient, ref: str) -> dict[str, Any]:
    """A job by id or a unique id prefix (among the latest 1000)."""
    if len(ref) >= 32:
        job: dict[str, Any] = client.get(f"/jobs/{seg(ref)}")
        return job
    matches = [j for j in client.get("/jobs", limit=1000) if str(j["id"]).startswith(ref)]
    if len(matches) == 1:
        only: dict[str, Any] = matches[0]
        return only
    if len(matches) > 1 and len(ref) >= 4:
        raise KluisError(
            "ValidationFailed", reason=f"{ref!r} matches {len(matches)} jobs; give more of the id"
        )
    raise KluisError("ResourceNotFound", kind="job", name=ref)


def _seconds(job: dict[str, Any]) -> float | None:
    try:
        start = dt.datetime.fromisoformat(job.get("dispatched_at") or job["created_at"])
        end = (
            dt.datetime.fromisoformat(job["ended_at"])
            if job.get("ended_at")
            else dt.datetime.now(start.tzinfo)
        )
    except (KeyError, TypeError, ValueError):
        return None
    return max(0.0, (end - start).total_seconds())


def duration(job: dict[str, Any]) -> str:
    """'1 h 02 min', '3 min 05 s', '12 s'."""
    secs = _seconds(job)
    if secs is None:
        return ""
    s = int(secs)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def warning_summary(job: dict[str, Any]) -> dict[str, Any]:
    """For a job that completed with warnings: skipped files, the failed-files log, coded entries."""
    warnings: list[dict[str, Any]] = list(job.get("warnings") or [])
    stats = (job.get("result") or {}).get("stats") or {}
    progress = job.get("progress") or {}
    summary = next((w for w in warnings if w.get("code") == "BackupCompletedWithWarnings"), None)
    params = (summary or {}).get("params") or {}
    entries = [w for w in warnings if w is not summary]
    skipped = params.get("count", stats.get("warnings", progress.get("files_failed", len(entries))))
    log = params.get("log") or stats.get("failed_files_log") or stats.get("failed_log")
    return {"skipped": skipped, "failed_files_log": log, "entries": entries}


def _progress_line(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    parts = []
    if p.get("percent") is not None:
        parts.append(f"{float(p['percent']):.0f}%")
    if p.get("files_done") is not None:
        total = f"/{p['files_total']}" if p.get("files_total") else ""
        parts.append(f"{p['files_done']}{total} files")
    if p.get("bytes_done") is not None:
        # The total is the agent's estimate (the last backup's size); past it, it says nothing.
        known = p.get("bytes_total") and p["bytes_total"] >= p["bytes_done"]
        total = f" of {size(p['bytes_total'])}" if known else ""
        parts.append(f"{size(p['bytes_done'])}{total}")
    return ", ".join(parts)


def _error_code(job: dict[str, Any]) -> str:
    """The catalog code a failed job ended with ('' otherwise): `jobs show` has the rest."""
    error = job.get("error")
    return str(error.get("code", "")) if isinstance(error, dict) else ""


def result_line(stats: dict[str, Any]) -> str:
    """The figures of a finished backup or restore that people look at (all are in --json)."""
    parts = []
    if stats.get("files") is not None:
        parts.append(f"{stats['files']} files")
    if stats.get("bytes") is not None:
        parts.append(f"{size(stats['bytes'])} read" if "new_bytes" in stats else size(stats["bytes"]))
    if stats.get("new_bytes") is not None:
        parts.append(f"{size(stats['new_bytes'])} new")
    if stats.get("stored_bytes") is not None:
        parts.append(f"{size(stats['stored_bytes'])} stored")
    if stats.get("seconds") is not None:
        parts.append(f"in {float(stats['seconds']):.1f} s")
    if stats.get("target"):
        parts.append(f"into {stats['target']}")
    return ", ".join(parts) or ", ".join(
        f"{k}={v}" for k, v in stats.items() if not isinstance(v, dict | list)
    )


def print_job(job: dict[str, Any], client: VaultClient | None = None) -> None:
    """Everything a person wants to know about one job."""
    item_name = ""
    if client is not None and job.get("item_id"):
        try:
            item_name = client.get(f"/items/{seg(job['item_id'])}")["name"]
        except KluisError:
            item_name = ""
    out.print(f"[bold]{job['type']}[/] job {job['id']}: {status_style(job['status'])}")
    if job.get("item_id"):
        out.print(
            f"  item:     {item_name} ({job['item_id']})" if item_name else f"  item:     {job['item_id']}"
        )
    if job.get("machine_id"):
        out.print(f"  machine:  {job['machine_id']}")
    out.print(f"  trigger:  {job.get('trigger', '')} by {job.get('created_by') or '-'}")
    ended = when(job.get("ended_at")) or "-"
    out.print(f"  started:  {when(job.get('created_at'))}; ended: {ended} ({duration(job)})")
    if job.get("phase"):
        out.print(f"  phase:    {job['phase']}")
    line = _progress_line(job)
    if line:
        out.print(f"  progress: {line}")
    note = (job.get("progress") or {}).get("message")
    if note and job["status"] not in FINAL:
        out.print(f"  [yellow]{note}[/]")
    if job.get("retain_until"):
        out.print(f"  recovery point kept until {when(job['retain_until'])}")
    stats = (job.get("result") or {}).get("stats") or {}
    if stats:
        out.print(f"  result:   {result_line(stats)}")
    if job.get("error"):
        error = error_from_body(job["error"])
        message = error.message if error else str(job["error"].get("message", job["error"]))
        out.print(f"  [red]error {job['error'].get('code')}[/]: {message}")
        detail = job["error"].get("detail")
        if detail and str(detail) not in message:
            # A code this CLI does not know renders without it: the specifics still show.
            out.print(f"  detail:   {detail}")
        if error is not None:
            for i, action in enumerate(error.actions, 1):
                out.print(f"    {i}. {action}")
    if job.get("cancel_error"):
        out.print(f"  [red]cancel failed[/]: {job['cancel_error'].get('message', '')}")
    if job["status"] == "CompletedWithWarnings" or job.get("warnings"):
        summary = warning_summary(job)
        if job.get("type") == "Backup":
            out.print(f"  [yellow]{summary['skipped']} files skipped[/]")
        else:  # a restore's warnings are files it could not write, or paths not in the point
            out.print(f"  [yellow]{len(summary['entries'])} warnings[/]")
        if summary["failed_files_log"]:
            out.print(f"  failed-files log: {summary['failed_files_log']}")
        for w in summary["entries"][:SHOW_WARNINGS]:
            out.print(f"    [yellow]{w.get('code', '?')}[/] {w.get('message', '')}")
        more = len(summary["entries"]) - SHOW_WARNINGS
        if more > 0:
            out.print(f"    ... and {more} more in the log")


def wait_for_job(
    client: VaultClient, job: dict[str, Any], *, show_progress: bool, label: str
) -> dict[str, Any]:
    """Poll a job until it ends; with ``show_progress`` a bar with size, rate and ETA on stderr."""
    if job["status"] in FINAL:
        return job
    delay = POLL_FIRST

    def pause() -> None:
        nonlocal delay
        time.sleep(delay)
        delay = min(POLL_MAX, delay * 1.5)

    if not show_progress or not console.is_terminal:
        while job["status"] not in FINAL:
            pause()
            job = client.get(f"/jobs/{seg(job['id'])}")
        return job
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        TaskProgressColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[files]}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None, files="")
        while job["status"] not in FINAL:
            p = job.get("progress") or {}
            total = p.get("bytes_total")
            done = p.get("bytes_done")
            if done is None and total and p.get("percent") is not None:
                done = int(total * float(p["percent"]) / 100)
            if total is not None and done is not None and done > total:
                total = done  # the estimate (last backup's size) was too small
            files = f"{p['files_done']} files" if p.get("files_done") is not None else ""
            phase = job.get("phase") or ("waiting for the agent" if not job.get("dispatched_at") else label)
            bar.update(task, completed=done or 0, total=total or None, files=files, description=phase)
            pause()
            job = client.get(f"/jobs/{seg(job['id'])}")
    return job


def finish(job: dict[str, Any], *, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    """Exit the way a finished job calls for: 0, the job error's exit code, or 130 when cancelled."""
    if job["status"] == "Failed":
        error = error_from_body(job.get("error")) or KluisError("InternalError", ref=job["id"])
        if not as_json:
            raise error
        print_json({**job, **(extra or {})})
        raise SystemExit(error.entry.exit_code)
    if as_json:
        print_json({**job, **(extra or {})})
    if job["status"] == "Cancelled":
        raise SystemExit(KluisError("OperationCancelled", operation="job").entry.exit_code)


@app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option("--status", help="InProgress, Completed, Failed, ...")] = None,
    job_type: Annotated[str | None, typer.Option("--type", help="Backup, Restore, ...")] = None,
    item: Annotated[str | None, typer.Option("--item", help="Only this item's jobs.")] = None,
    machine: MachineOpt = None,
    limit: Annotated[int, typer.Option("--limit", help="How many, newest first.")] = 50,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List jobs, newest first."""

    def body(client: VaultClient) -> None:
        item_id = client.item(item)["id"] if item else None
        machine_id = client.machine(machine)["id"] if machine else None
        rows = client.get(
            "/jobs", status=status, type=job_type, item_id=item_id, machine_id=machine_id, limit=limit
        )
        if as_json:
            print_json(rows)
            return
        names = {i["id"]: i["name"] for i in client.get("/items")}
        t = table("id", "type", "status", "trigger", "item", "started", "duration", "progress / error")
        for j in rows:
            t.add_row(
                short(j["id"]),
                j["type"],
                status_style(j["status"]),
                j.get("trigger") or "",
                names.get(j.get("item_id") or "", short(j.get("item_id"))),
                when(j.get("created_at")),
                duration(j),
                _progress_line(j) if j["status"] not in FINAL else _error_code(j),
            )
        print_table(t)

    with_client(body, vault, token, as_json)


@app.command("show")
def show(
    job: Annotated[str, typer.Argument(help="Job id or id prefix.")],
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a job: progress, result, error with its actions, skipped files with their codes."""

    def body(client: VaultClient) -> None:
        found = find_job(client, job)
        if as_json:
            print_json(
                {**found, "warning_summary": warning_summary(found)} if found.get("warnings") else found
            )
            return
        print_job(found, client)

    with_client(body, vault, token, as_json)


@app.command("cancel")
def cancel(
    job: Annotated[str, typer.Argument(help="Job id or id prefix.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the agent has stopped the job.")] = False,
    vault: VaultOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel a backup or restore job (at once if no agent took it yet, else by the agent)."""

    def body(client: VaultClient) -> None:
        found = find_job(client, job)
        result = client.post(f"/jobs/{seg(found['id'])}/cancel")
        if wait:
            result = wait_for_job(client, result, show_progress=False, label="Cancelling")
        if as_json:
            print_json(result)
            return
        if result["status"] == "Cancelling":
            out.print(f"Job {result['id']} is being cancelled; the agent stops it shortly.")
        else:
            out.print(f"Job {result['id']}: {status_style(result['status'])}")

    with_client(body, vault, token, as_json)
