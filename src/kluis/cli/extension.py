"""``kluis extension``: the extensions installed on this machine's agent (list, uninstall).

An uninstalled extension is installed again, from the vault, by the next disk backup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kluis.catalog import KluisError
from kluis.cli.output import out, print_json, run_command

app = typer.Typer(help="Extensions installed on this machine (the snapshot extension).", no_args_is_help=True)

ConfigDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--config-dir",
        help="Agent configuration directory (default /etc/kluis).",
        envvar="KLUIS_AGENT_CONFIG_DIR",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def manager(config_dir: Path | None) -> Any:
    """The agent's ExtensionManager (its scratch folder's extensions directory)."""
    from kluis.agent.config import AgentConfig
    from kluis.agent.config import config_dir as resolve
    from kluis.agent.extensions.snapshot import ExtensionManager
    from kluis.agent.scratch import Layout

    cfg = AgentConfig.load(resolve(config_dir))
    return ExtensionManager(Layout(cfg.scratch).extensions, machine=cfg.hostname)


@app.command("list")
def list_extensions(config_dir: ConfigDirOpt = None, as_json: JsonOpt = False) -> None:
    """Installed extensions with their version and handler state."""

    def body() -> None:
        entries = manager(config_dir).heartbeat_entries()
        if as_json:
            print_json(entries)
            return
        if not entries:
            out.print("No extensions installed (the first disk backup installs the snapshot extension).")
        for e in entries:
            line = f"{e.get('name')}  {e.get('version')}  {e.get('state')}"
            if e.get("code"):
                line += f"  {e.get('code')}: {e.get('message', '')}"
            out.print(line)

    run_command(body, as_json=as_json)


@app.command("uninstall")
def uninstall(
    name: Annotated[str, typer.Argument(help="Extension name (snapshot).")],
    config_dir: ConfigDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove an extension and its handler state; the next disk backup installs it again."""

    def body() -> None:
        if not manager(config_dir).uninstall(name):
            raise KluisError("ResourceNotFound", kind="extension", name=name)
        if as_json:
            print_json({"name": name, "uninstalled": True})
            return
        out.print(f"Extension {name} uninstalled; the next disk backup installs it again.")

    run_command(body, as_json=as_json)
