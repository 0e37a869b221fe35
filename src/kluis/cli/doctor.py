"""``kluis doctor``: run the health checks on this machine (or, with ``--vault``, on the vault server).

People get a table of checks with their verdicts, then for each failure and warning
the catalog entry (code, message, likely causes, what to do) and the exact command or
setting that fixes it. ``--json`` prints the whole report. Exit code 0 when no check
failed (warnings included), 1 when any did. See docs/doctor.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from kluis.catalog import KluisError
from kluis.cli.output import out, print_json, run_command

if TYPE_CHECKING:
    from kluis.doctor import Report

app = typer.Typer()

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def _print_report(report: Report) -> None:
    from kluis.catalog.ui import t
    from kluis.doctor import Verdict

    title = "kluis doctor: vault server" if report.mode == "vault" else "kluis doctor: this machine"
    table = Table(title=t(title), show_lines=False)
    table.add_column(t("Check"))
    table.add_column(t("Verdict"))
    table.add_column(t("Code"))
    table.add_column(t("Finding"), overflow="fold")
    for o in report.outcomes:
        r = o.result
        verdict = str(r.verdict)
        code = r.error.code if r.error is not None else ""
        table.add_row(
            escape(t(o.check.title)), f"[{_STYLE[verdict]}]{t(verdict).upper()}[/]", code, escape(r.summary)
        )
    out.print(table)
    if report.fixes:
        out.print(f"[bold]{t('Fixes applied (then checked again):')}[/]")
        for f in report.fixes:
            mark = f"[green]{t('done')}[/]" if f.ok else f"[red]{t('failed')}[/]"
            out.print(f"  {mark} {f.fix} ({f.check}): {escape(f.message)}")
    for o in report.outcomes:
        r = o.result
        if r.error is None or str(r.verdict) not in ("fail", "warn"):
            continue
        e = r.error
        colour = _STYLE[str(r.verdict)]
        out.print()
        out.print(f"[{colour}]{escape(t(o.check.title))}: {e.code}[/] [bold]{escape(e.title)}[/]")
        out.print(f"  {escape(e.message)}")
        if e.causes:
            out.print(f"  [bold]{t('Likely causes:')}[/]")
            for i, cause in enumerate(e.causes, 1):
                out.print(f"    {i}. {escape(cause)}")
        if e.actions:
            out.print(f"  [bold]{t('What to do:')}[/]")
            for i, action in enumerate(e.actions, 1):
                out.print(f"    {i}. {escape(action)}")
        if r.fix:
            out.print(f"  [bold]{t('Fix:')}[/] {escape(r.fix)}")
        if r.auto_fix is not None and not report.fixes:
            can = t("`kluis doctor --fix` can do this: {what}.", what=r.auto_fix.description)
            out.print(f"  [dim]{escape(can)}[/]")
        out.print(f"  [dim]{t('More:')} {e.to_dict()['docs']}[/]")
    counts = ", ".join(f"{report.count(v)} {t(str(v))}" for v in Verdict)
    out.print()
    if not report.ok:
        verdict = "Some checks failed"
    elif report.count(Verdict.PASS) == len(report.outcomes):
        verdict = "All checks passed"
    else:
        verdict = "No check failed"
    out.print(f"[bold]{t(verdict)}[/] ({counts})")


@app.command("doctor")
def doctor(
    vault: Annotated[
        bool, typer.Option("--vault", help="Check the vault server (run on the vault host) instead.")
    ] = False,
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Apply the safe fixes (restart the agent, reinstall an extension, delete expired"
            " instant recovery points), then check again.",
        ),
    ] = False,
    config_dir: Annotated[
        Path | None,
        typer.Option(
            "--config-dir",
            help="Agent configuration directory (default /etc/kluis).",
            envvar="KLUIS_AGENT_CONFIG_DIR",
        ),
    ] = None,
    data: Annotated[
        Path,
        typer.Option("--data", help="With --vault: the vault's data directory.", envvar="KLUIS_VAULT_DATA"),
    ] = Path("/var/lib/kluis-vault"),
    config: Annotated[
        Path | None,
        typer.Option("--config", help="With --vault: the vault configuration (default DATA/vault.toml)."),
    ] = None,
    hostname: Annotated[
        str | None,
        typer.Option(
            "--hostname", help="Use this host name instead of the system's (for tests).", hidden=True
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Check this machine's agent step by step and name the cause; exit 1 when a check fails."""
    exit_code = 0

    def body() -> None:
        nonlocal exit_code
        from kluis.doctor import run_machine, run_vault

        if vault:
            if fix:
                raise KluisError(
                    "ValidationFailed", reason="--fix repairs a machine; it does not go with --vault"
                )
            from kluis.vault.config import CONFIG_NAME

            report = run_vault(config or data / CONFIG_NAME)
        else:
            from kluis.agent.config import config_dir as resolve

            report = run_machine(resolve(config_dir), fix=fix, hostname=hostname)
        if as_json:
            print_json(report.to_dict())
        else:
            _print_report(report)
        exit_code = report.exit_code

    run_command(body, as_json=as_json)
    raise typer.Exit(exit_code)
