"""``kluis agent``: register this machine with a vault, run the agent daemon, show its status.

The configuration lives in ``/etc/kluis`` unless ``--config-dir`` (or
``KLUIS_AGENT_CONFIG_DIR``) names another directory; every command takes the option.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kluis.catalog import KluisError
from kluis.cli.output import console, out, print_json, run_command
from kluis.cli.passphrase import read_passphrase_file

app = typer.Typer(help="The agent on this machine: register, run, status.", no_args_is_help=True)
config_app = typer.Typer(help="Show or change the agent's configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--config-dir",
        help="Agent configuration directory (default /etc/kluis).",
        envvar="KLUIS_AGENT_CONFIG_DIR",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
HostnameOpt = Annotated[
    str | None,
    typer.Option("--hostname", help="Use this host name instead of the system's (for tests).", hidden=True),
]
PassFileOpt = Annotated[Path | None, typer.Option("--passphrase-file", help="File holding the passphrase.")]

PASSPHRASE_WARNING = (
    "Nobody can recover this passphrase: not the vault's administrators and not Kluis. Without it"
    " (or this machine's KEK file) the backups cannot be decrypted. Keep it in a password manager."
)


def _read_passphrase(path: Path | None, *, confirm: bool, what: str = "Passphrase") -> str:
    """From a file, ``KLUIS_PASSPHRASE``, or asked (twice when ``confirm``) on a terminal."""
    if path is not None:
        return read_passphrase_file(path)
    env = os.environ.get("KLUIS_PASSPHRASE")
    if env:
        return env
    if not sys.stdin.isatty():
        raise KluisError(
            "ValidationFailed", reason="no passphrase: give --passphrase-file or run on a terminal"
        )
    if confirm:
        console.print(f"[bold yellow]{PASSPHRASE_WARNING}[/]")
    first = str(typer.prompt(what, hide_input=True))
    if confirm:
        from kluis.agent.registration import check_passphrase

        check_passphrase(first)
        second = str(typer.prompt("Type it again", hide_input=True))
        if first != second:
            raise KluisError("AgentPassphraseMismatch")
    return first


def _config(config_dir: Path | None) -> Any:
    from kluis.agent.config import AgentConfig
    from kluis.agent.config import config_dir as resolve

    return AgentConfig.load(resolve(config_dir))


def _when(ts: Any) -> str:
    if not ts:
        return "never"
    return dt.datetime.fromtimestamp(float(ts)).astimezone().isoformat(timespec="seconds")


@app.command("register")
def register(
    vault_credentials: Annotated[
        Path, typer.Option("--vault-credentials", help="The .vaultCredentials file made on the vault.")
    ],
    passphrase_file: PassFileOpt = None,
    proxy: Annotated[
        str | None, typer.Option("--proxy", help="Proxy URL, http://[USER:PASSWORD@]HOST:PORT.")
    ] = None,
    scratch: Annotated[
        Path | None, typer.Option("--scratch", help="Scratch folder (default /var/lib/kluis/scratch).")
    ] = None,
    config_dir: ConfigDirOpt = None,
    hostname: HostnameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register this machine with a vault and set its encryption passphrase."""

    def body() -> None:
        from kluis.agent.config import config_dir as resolve
        from kluis.agent.registration import RegisterRequest
        from kluis.agent.registration import register as do_register

        result = do_register(
            RegisterRequest(
                credentials_file=vault_credentials,
                passphrase=lambda: _read_passphrase(passphrase_file, confirm=True),
                config_dir=resolve(config_dir),
                scratch=scratch,
                proxy=proxy,
                hostname=hostname,
            )
        )
        if as_json:
            print_json(result)
            return
        verb = "Registered again" if result["reregistered"] else "Registered"
        out.print(
            f"{verb}: machine [bold]{result['hostname']}[/] ({result['machine_id']}) with vault"
            f" [bold]{result['vault_name']}[/] at {result['vault_url']}"
        )
        out.print(f"Configuration: {result['config']}; KEK file: {result['kek_file']}")
        if not result["repository_ready"]:
            err = result["repository_error"] or {}
            out.print(
                f"[yellow]The repository could not be prepared yet ({err.get('code')});"
                " the first job does it.[/]"
            )
        out.print(f"[bold yellow]{PASSPHRASE_WARNING}[/]")
        out.print("Start the agent: systemctl enable --now kluis-agent")

    run_command(body, as_json=as_json)


@app.command("run")
def run(
    config_dir: ConfigDirOpt = None,
    hostname: HostnameOpt = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the agent daemon in the foreground (what the kluis-agent service runs)."""

    def body() -> None:
        from kluis.agent.daemon import Daemon

        logging.basicConfig(
            level=log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        if log_level.lower() != "debug":
            # One line per request drowns the agent's own messages in the journal.
            logging.getLogger("httpx").setLevel(logging.WARNING)
        cfg = _config(config_dir)
        raise SystemExit(Daemon(cfg, hostname=hostname).run())

    run_command(body)


@app.command("status")
def status(
    config_dir: ConfigDirOpt = None,
    check: Annotated[
        bool, typer.Option("--check", help="Also send a heartbeat now to test the connection.")
    ] = False,
    hostname: HostnameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Which vault this machine belongs to, its name, the agent version, the last heartbeat."""

    def body() -> None:
        from kluis import __version__
        from kluis.agent.config import current_hostname
        from kluis.agent.scratch import Layout
        from kluis.agent.state import read_state

        cfg = _config(config_dir)
        layout = Layout(cfg.scratch)
        state = read_state(layout.state)
        pid = state.get("pid")
        alive = bool(pid) and Path(f"/proc/{pid}").exists()
        info: dict[str, Any] = {
            "vault_name": cfg.vault_name,
            "vault_id": cfg.vault_id,
            "vault_url": cfg.vault_url,
            "machine_id": cfg.machine_id,
            "machine_name": cfg.hostname,
            "current_hostname": current_hostname(hostname),
            "agent_version": __version__,
            "daemon_running": alive,
            "daemon_pid": pid if alive else None,
            "last_heartbeat_at": state.get("last_heartbeat_at"),
            "last_heartbeat_error": state.get("last_heartbeat_error"),
            "agent_outdated": state.get("agent_outdated"),
            "latest_agent_version": state.get("latest_agent_version"),
            "extensions": state.get("extensions") or [],
            "running_jobs": state.get("running") or {},
            "recent_jobs": (state.get("recent") or [])[:5],
            "scratch": str(cfg.scratch),
            "kek_file_present": layout.kek.exists(),
            "proxy": cfg.proxy,
        }
        if check:
            info["check"] = _live_check(cfg, hostname)
        if as_json:
            print_json(info)
            return
        table = Table(show_header=False, box=None)
        table.add_row("Vault", f"{cfg.vault_name} ({cfg.vault_id}) at {cfg.vault_url}")
        table.add_row("Machine", f"{cfg.hostname} ({cfg.machine_id})")
        if info["current_hostname"] != cfg.hostname:
            table.add_row("[red]Host name now[/]", f"[red]{info['current_hostname']} (230006)[/]")
        table.add_row(
            "Agent version", __version__ + (" [yellow](outdated)[/]" if info["agent_outdated"] else "")
        )
        table.add_row("Daemon", f"running (pid {pid})" if alive else "[yellow]not running[/]")
        table.add_row("Last heartbeat", _when(info["last_heartbeat_at"]))
        hb_error = info["last_heartbeat_error"]
        if hb_error:
            table.add_row("[red]Heartbeat error[/]", f"{hb_error.get('code')}: {hb_error.get('message')}")
        exts = info["extensions"]
        table.add_row(
            "Extensions",
            ", ".join(f"{e.get('name')} {e.get('version', '')}: {e.get('state')}" for e in exts)
            or "none installed",
        )
        table.add_row("Running jobs", ", ".join(info["running_jobs"]) or "none")
        table.add_row(
            "Scratch folder",
            str(cfg.scratch) + ("" if info["kek_file_present"] else " [red](KEK file missing: 34506)[/]"),
        )
        if check:
            c = info["check"]
            table.add_row(
                "Connection", "ok" if c.get("ok") else f"[red]{c.get('code')}: {c.get('message')}[/]"
            )
        out.print(table)

    run_command(body, as_json=as_json)


def _live_check(cfg: Any, hostname: str | None) -> dict[str, Any]:
    from kluis import __version__
    from kluis.agent.client import endpoint_of, session_client
    from kluis.agent.config import current_hostname
    from kluis.agent.net import probe
    from kluis.agent.registration import os_description

    try:
        probe(endpoint_of(cfg))
        client = session_client(cfg)
        try:
            client.heartbeat(
                cfg.machine_id,
                {
                    "hostname": current_hostname(hostname),
                    "agent_version": __version__,
                    "agent_status": "Ready",
                    "os": os_description(),
                    "extensions": [],
                },
            )
        finally:
            client.close()
    except KluisError as exc:
        return {"ok": False, **exc.to_dict()}
    return {"ok": True}


@app.command("unlock")
def unlock(
    passphrase_file: PassFileOpt = None, config_dir: ConfigDirOpt = None, as_json: JsonOpt = False
) -> None:
    """Recreate the KEK file from the passphrase (when it is missing or damaged: ID 34506)."""

    def body() -> None:
        from kluis.agent.registration import unlock as do_unlock

        cfg = _config(config_dir)
        result = do_unlock(cfg, _read_passphrase(passphrase_file, confirm=False))
        if as_json:
            print_json(result)
        else:
            out.print(f"KEK file written: {result['kek_file']}")

    run_command(body, as_json=as_json)


@app.command("source-passphrase")
def source_passphrase(
    machine_id: Annotated[str, typer.Argument(help="Id of the machine whose backups will be restored here.")],
    passphrase_file: PassFileOpt = None,
    config_dir: ConfigDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give this agent another machine's passphrase, to restore that machine's backups here."""

    def body() -> None:
        from kluis.agent.keys import save_source_passphrase

        cfg = _config(config_dir)
        path = save_source_passphrase(cfg, machine_id, _read_passphrase(passphrase_file, confirm=False))
        result = {"source_machine_id": machine_id, "stored": str(path)}
        if as_json:
            print_json(result)
        else:
            out.print(
                f"Stored for machine {machine_id}; the first restore from it checks it"
                " and keeps only the key."
            )

    run_command(body, as_json=as_json)


@app.command("unregister")
def unregister(
    config_dir: ConfigDirOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Forget this machine's registration here (configuration and KEK file); the vault keeps its data."""

    def body() -> None:
        from kluis.agent.config import CA_NAME, CONFIG_NAME
        from kluis.agent.config import config_dir as resolve
        from kluis.agent.scratch import Layout

        directory = resolve(config_dir)
        cfg = _config(config_dir)
        if not yes:
            typer.confirm(
                f"Remove the registration with vault {cfg.vault_name} and the KEK file? Keep the passphrase:"
                " without it the backups cannot be read again",
                abort=True,
            )
        for path in (directory / CONFIG_NAME, directory / CA_NAME, Layout(cfg.scratch).kek):
            path.unlink(missing_ok=True)
        out.print("Registration removed from this machine.")

    run_command(body)


@config_app.command("show")
def config_show(config_dir: ConfigDirOpt = None, as_json: JsonOpt = False) -> None:
    """Print the configuration (the token is not shown)."""

    def body() -> None:
        cfg = _config(config_dir)
        doc = cfg.to_toml()
        doc["machine"]["token"] = "***"
        if as_json:
            print_json(doc)
            return
        import tomli_w

        out.print(tomli_w.dumps(doc), highlight=False)

    run_command(body, as_json=as_json)


_SETTABLE = (
    "scratch",
    "proxy",
    "max_jobs",
    "heartbeat_interval",
    "poll_wait",
    "work_hours_limit",
    "off_hours_limit",
    "work_days",
    "work_start",
    "work_end",
    "extensions",
)


@config_app.command("set")
def config_set(
    key: Annotated[str, typer.Argument(help=f"One of: {', '.join(_SETTABLE)}.")],
    value: Annotated[str, typer.Argument(help="The new value ('' to clear proxy or heartbeat_interval).")],
    config_dir: ConfigDirOpt = None,
) -> None:
    """Change one setting; ``scratch`` moves the folder's content (stop the agent first)."""

    def body() -> None:
        import dataclasses

        from kluis.agent.config import AgentConfig, parse_rate

        cfg: AgentConfig = _config(config_dir)
        if key not in _SETTABLE:
            raise KluisError(
                "ValidationFailed", reason=f"unknown setting {key!r}; one of {', '.join(_SETTABLE)}"
            )
        try:
            if key == "scratch":
                cfg = _move_scratch(cfg, Path(value).absolute())
            elif key == "proxy":
                cfg = cfg.replace(proxy=value or None)
            elif key == "max_jobs":
                cfg = cfg.replace(max_jobs=int(value))
            elif key == "heartbeat_interval":
                cfg = cfg.replace(heartbeat_interval=float(value) if value else None)
            elif key == "poll_wait":
                cfg = cfg.replace(poll_wait=float(value))
            elif key == "extensions":
                cfg = cfg.replace(extensions_enabled=_parse_bool(value))
            else:
                bw = cfg.bandwidth
                if key == "work_hours_limit":
                    bw = dataclasses.replace(bw, work_hours_limit=parse_rate(value))
                elif key == "off_hours_limit":
                    bw = dataclasses.replace(bw, off_hours_limit=parse_rate(value))
                elif key == "work_days":
                    days = tuple(d.strip().lower()[:3] for d in value.split(",") if d.strip())
                    bw = dataclasses.replace(bw, work_days=days)
                elif key == "work_start":
                    bw = dataclasses.replace(bw, work_start=value)
                else:
                    bw = dataclasses.replace(bw, work_end=value)
                cfg = cfg.replace(bandwidth=bw)
        except ValueError as exc:
            raise KluisError("ValidationFailed", reason=f"{key}: {exc}") from None
        assert cfg.path is not None
        AgentConfig.from_toml(cfg.to_toml(), cfg.path)  # refuse values the daemon would refuse
        cfg.save()
        out.print(f"{key} set; restart the agent to apply it (systemctl restart kluis-agent).")

    run_command(body)


def _parse_bool(value: str) -> bool:
    """``true``/``false`` (also on/off, yes/no, 1/0) for switches such as ``extensions``."""
    word = value.strip().lower()
    if word in ("true", "on", "yes", "1"):
        return True
    if word in ("false", "off", "no", "0"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _move_scratch(cfg: Any, new: Path) -> Any:
    """Move the scratch folder's content to ``new`` (refused while the daemon runs)."""
    import fcntl

    from kluis.agent.scratch import Layout, check_for_registration

    old = Layout(cfg.scratch)
    if new == cfg.scratch:
        return cfg
    if old.lock.exists():
        with open(old.lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise KluisError(
                    "AgentAlreadyRunning", pid=f.read().strip() or "?", path=str(cfg.scratch)
                ) from None
    check_for_registration(new)
    if cfg.scratch.is_dir():
        for entry in cfg.scratch.iterdir():
            shutil.move(str(entry), str(new / entry.name))
    return cfg.replace(scratch=new)
