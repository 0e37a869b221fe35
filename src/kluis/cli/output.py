"""How every command prints: tables and progress for people, JSON for programs, catalog errors for both."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from kluis.catalog import KluisError
from kluis.engine.progress import Progress as WorkProgress

console = Console(stderr=True)
out = Console()


def print_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fail(error: KluisError, *, as_json: bool = False) -> NoReturn:
    """Print a catalog error (code, message, causes, actions) and exit with its exit code."""
    if as_json:
        print_json({"error": error.to_dict()})
    else:
        from rich.markup import escape

        from kluis.catalog.ui import t

        # Messages carry paths and reasons from outside (file names, server answers): a
        # "[" in them must print as it is, not as rich markup.
        console.print(f"[bold red]{t('Error')} {error.code}[/]: {escape(error.message)}")
        if error.causes:
            console.print(f"[bold]{t('Likely causes:')}[/]")
            for i, cause in enumerate(error.causes, 1):
                console.print(f"  {i}. {escape(cause)}")
        if error.actions:
            console.print(f"[bold]{t('What to do:')}[/]")
            for i, action in enumerate(error.actions, 1):
                console.print(f"  {i}. {escape(action)}")
        console.print(f"[dim]{t('More:')} {escape(error.to_dict()['docs'])}[/]")
    raise SystemExit(error.entry.exit_code)


def run_command(func: Callable[[], None], *, as_json: bool = False) -> None:
    """Run a command body, turning catalog errors into their documented output and exit code."""
    try:
        func()
    except KluisError as exc:
        fail(exc, as_json=as_json)


@contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[Callable[[WorkProgress], None]]:
    """A rich progress bar (size, rate, ETA) fed by engine progress callbacks."""
    if not enabled or not console.is_terminal:
        yield lambda _p: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[files]} files"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None, files=0)

        def update(p: WorkProgress) -> None:
            bar.update(task, completed=p.bytes, total=p.total_bytes, files=p.files)

        yield update


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
