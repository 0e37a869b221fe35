"""``kluis vault``: set up and run a vault server.

Server-side commands (``init``, ``serve``, ``credentials``, ``users``) work on the vault's
own configuration and database, so they run on the vault host. The data directory
comes from ``--data`` (or ``KLUIS_VAULT_DATA``), the configuration from ``--config``
(default ``DATA/vault.toml``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kluis.catalog import KluisError
from kluis.cli.output import out, print_json, run_command

app = typer.Typer(help="Set up and run a Kluis vault server.", no_args_is_help=True)
users_app = typer.Typer(help="Users of the vault and their tokens.", no_args_is_help=True)
app.add_typer(users_app, name="users")
alerts_app = typer.Typer(
    help="Alerts raised by the vault (failed backups and restores).", no_args_is_help=True
)

DEFAULT_DATA = "/var/lib/kluis-vault"
DataOpt = Annotated[
    Path,
    typer.Option("--data", help="The vault's data directory.", envvar="KLUIS_VAULT_DATA"),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="The vault configuration (default DATA/vault.toml).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _config_path(data: Path, config: Path | None) -> Path:
    from kluis.vault.config import CONFIG_NAME

    return config or data / CONFIG_NAME


def _load(data: Path, config: Path | None) -> Any:
    from kluis.vault.config import VaultConfig

    return VaultConfig.load(_config_path(data, config))


@app.command("init")
def init(
    data: DataOpt = Path(DEFAULT_DATA),
    name: Annotated[str | None, typer.Option("--name", help="Vault name (default: the host name).")] = None,
    admin: Annotated[str, typer.Option("--admin", help="Name of the first admin user.")] = "admin",
    listen: Annotated[str | None, typer.Option("--listen", help="HOST:PORT to serve on.")] = None,
    url: Annotated[str | None, typer.Option("--url", help="The URL agents use to reach the vault.")] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL instead of DATA/vault.db.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a vault in DATA: configuration, database (SQLite unless --db), local store, first admin."""

    def body() -> None:
        import socket

        from kluis.stores import LocalStore
        from kluis.vault import users
        from kluis.vault.config import CONFIG_NAME, new_config
        from kluis.vault.db import open_database

        path = data / CONFIG_NAME
        if path.exists():
            raise KluisError("VaultConfigInvalid", path=str(path), reason="a vault is already set up there")
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        cfg = new_config(data, name or socket.gethostname().split(".")[0], listen=listen, url=url)
        if db:
            cfg.db_url = db
        database = open_database(cfg.db_url, cfg.vault_id)
        try:
            LocalStore(data / "store")
            with database.write() as s:
                user, token = users.add(s, admin, "Admin")
                user_name = user.name
        finally:
            database.dispose()
        cfg.save(path)
        result = {
            "vault_id": cfg.vault_id,
            "vault_name": cfg.vault_name,
            "config": str(path),
            "database": cfg.db_url,
            "store": cfg.store_url,
            "admin": user_name,
            "token": token,
        }
        if as_json:
            print_json(result)
            return
        out.print(f"Vault [bold]{cfg.vault_name}[/] ({cfg.vault_id}) set up in {data}")
        out.print(f"Configuration: {path}")
        out.print(f"Admin user [bold]{user_name}[/]; its token is shown only now:")
        out.print(token, highlight=False, soft_wrap=True)
        out.print(f"Start the vault with: kluis vault serve --data {data}")

    run_command(body, as_json=as_json)


@app.command("serve")
def serve(
    data: DataOpt = Path(DEFAULT_DATA),
    config: ConfigOpt = None,
    listen: Annotated[str | None, typer.Option("--listen", help="HOST:PORT to listen on.")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="PEM certificate for HTTPS.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM private key for HTTPS.")] = None,
    db: Annotated[
        str | None, typer.Option("--db", help="Database URL, e.g. postgresql://user@host/db.")
    ] = None,
    store: Annotated[
        str | None, typer.Option("--store", help="Store URL (file://, s3://, azure://).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the vault API (and run the scheduler) until stopped."""

    def body() -> None:
        from kluis.vault.server import serve as run_server

        cfg = _load(data, config).with_overrides(
            listen=listen,
            tls_cert=str(tls_cert) if tls_cert else None,
            tls_key=str(tls_key) if tls_key else None,
            db_url=db,
            store_url=store,
        )
        run_server(cfg, log_level=log_level)

    run_command(body)


@app.command("credentials")
def make_credentials(
    out_path: Annotated[Path, typer.Option("--out", help="File (or directory) to write the credentials to.")],
    data: DataOpt = Path(DEFAULT_DATA),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a new vault credentials file (valid 10 days; older files stop working)."""

    def body() -> None:
        from kluis.vault import credentials
        from kluis.vault.db import open_database

        cfg = _load(data, config)
        target = out_path / credentials.file_name(cfg.vault_name) if out_path.is_dir() else out_path
        if not target.name.endswith(credentials.EXTENSION):
            reason = f"the file name must end in {credentials.EXTENSION}; agents refuse other names"
            raise KluisError("ValidationFailed", reason=reason)
        user = f"cli:{os.environ.get('USER', 'root')}"
        # Open the file before issuing: a new file supersedes the old one, so a file that
        # cannot be written must not cost the administrator the credentials they had.
        existed = target.exists()
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            reason = f"cannot write {target}: {exc.strerror or exc}"
            raise KluisError("VaultCredentialsDownloadFailed", user=user, reason=reason) from None
        with os.fdopen(fd, "w") as f:
            database = open_database(cfg.db_url, cfg.vault_id)
            try:
                with database.write() as s:
                    creds = credentials.issue(s, cfg, created_by=user)
            except BaseException:
                if not existed:
                    target.unlink(missing_ok=True)
                raise
            finally:
                database.dispose()
            f.truncate(0)
            f.write(creds.to_json())
        result = {"file": str(target), "vault_id": cfg.vault_id, "expires_at": creds.expires_at.isoformat()}
        if as_json:
            print_json(result)
        else:
            out.print(f"Wrote {target}; valid until {creds.expires_at:%Y-%m-%d %H:%M} UTC.")
            out.print("Older credentials files of this vault no longer register machines.")

    run_command(body, as_json=as_json)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[str, typer.Option("--role", help="Reader, Operator, Contributor or Admin.")] = "Reader",
    data: DataOpt = Path(DEFAULT_DATA),
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a user; its token is printed once."""

    def body() -> None:
        from kluis.vault import users
        from kluis.vault.db import open_database

        cfg = _load(data, config)
        database = open_database(cfg.db_url, cfg.vault_id)
        try:
            with database.write() as s:
                user, token = users.add(s, name, role)
                result = {**users.user_dict(user), "token": token}
        finally:
            database.dispose()
        if as_json:
            print_json(result)
        else:
            out.print(f"User [bold]{result['name']}[/] ({result['role']}); the token is shown only now:")
            out.print(token, highlight=False, soft_wrap=True)

    run_command(body, as_json=as_json)


@users_app.command("list")
def users_list(
    data: DataOpt = Path(DEFAULT_DATA), config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """List users, their roles and how many live tokens they have."""

    def body() -> None:
        from kluis.vault import users
        from kluis.vault.db import open_database

        cfg = _load(data, config)
        database = open_database(cfg.db_url, cfg.vault_id)
        try:
            with database.read() as s:
                rows = users.list_users(s)
        finally:
            database.dispose()
        if as_json:
            print_json(rows)
            return
        table = Table("name", "role", "tokens", "disabled", "created")
        for r in rows:
            table.add_row(
                r["name"], r["role"], str(r["tokens"]), "yes" if r["disabled"] else "", r["created_at"][:19]
            )
        out.print(table)

    run_command(body, as_json=as_json)
