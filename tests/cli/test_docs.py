"""docs/cli.md documents every command, every option of the vault-facing commands, every exit code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from kluis.catalog import all_entries
from kluis.cli.main import app

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
# Vault-facing commands: their options are documented one by one.
DETAILED = {
    "login", "logout", "policy", "protect", "items", "backup", "jobs", "points", "restore", "mount",
    "unmount", "stop-protection", "undelete", "resume-protection", "alerts",
}  # fmt: skip
SHARED = {"--vault", "--token", "--json", "--help"}


def _commands(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    if hasattr(command, "commands"):
        found = []
        for name, sub in command.commands.items():
            found += _commands(sub, [*path, name])
        return found
    return [(path, command)]


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^### (kluis [^\n]+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_command_and_option_is_documented() -> None:
    sections = _sections(DOC.read_text())
    missing = []
    for path, command in _commands(typer.main.get_command(app), []):
        title = "kluis " + " ".join(path)
        if title not in sections:
            missing.append(f"no section '### {title}'")
            continue
        if path[0] not in DETAILED:
            continue
        for param in command.params:
            if getattr(param, "hidden", False) or type(param).__name__.endswith("Argument"):
                continue
            longest = max(param.opts, key=len)
            if longest not in SHARED and longest not in sections[title]:
                missing.append(f"{title}: option {longest} is not described")
    assert not missing, "\n".join(missing)


def test_every_exit_code_is_in_the_table() -> None:
    text = DOC.read_text()
    table = {int(m) for m in re.findall(r"^\| (\d+) \|", text, flags=re.M)}
    used = {entry.exit_code for entry in all_entries().values()} | {0, 2}
    assert used <= table, f"exit codes without a row in docs/cli.md: {sorted(used - table)}"
