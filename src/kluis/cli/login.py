"""``kluis login`` / ``kluis logout``: remember which vault to talk to and with which token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kluis.catalog import KluisError
from kluis.cli.client import (
    Connection,
    VaultClient,
    agent_vault,
    config_path,
    normalise_fingerprint,
    save_config,
)
from kluis.cli.common import JsonOpt
from kluis.cli.output import out, print_json, run_command

app = typer.Typer()


@app.command("login")
def login(
    vault: Annotated[
        str | None,
        typer.Option(
            "--vault", help="Vault URL, e.g. https://backup-01:8400 (default: this machine's agent's)."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Your user token (asked for when left out).", show_default=False),
    ] = None,
    tls_fingerprint: Annotated[
        str | None,
        typer.Option(
            "--tls-fingerprint", help="Pin the vault's certificate: sha256:HEX (see its credentials file)."
        ),
    ] = None,
    credentials_file: Annotated[
        Path | None,
        typer.Option(
            "--credentials-file", help="Take the vault URL and certificate pin from a .vaultCredentials file."
        ),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option("--ca-file", help="Trust this CA certificate (PEM) for the vault's TLS.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a vault URL and token, then save them for the other commands (mode 0600)."""

    def body() -> None:
        url, fingerprint = vault, tls_fingerprint
        if credentials_file is not None:
            from kluis.vault.credentials import read_file

            creds = read_file(credentials_file)
            url = url or creds.url
            fingerprint = fingerprint or creds.tls_fingerprint
        if not url:
            agent = agent_vault()
            url = agent.get("url")
            fingerprint = fingerprint or agent.get("tls_fingerprint")
        if not url:
            raise KluisError("CliNotLoggedIn", missing="the vault URL (--vault)")
        secret = token or str(typer.prompt("User token", hide_input=True))
        conn = Connection(
            url=url.rstrip("/"),
            token=secret.strip(),
            tls_fingerprint=normalise_fingerprint(fingerprint) if fingerprint else None,
            ca_file=str(ca_file.absolute()) if ca_file else None,
        )
        with VaultClient(conn) as client:
            me = client.get("/me")
            info = client.get("/health")
        if me.get("kind") != "user":
            raise KluisError(
                "ValidationFailed", reason="that is a machine token; the commands need a user's token"
            )
        path = save_config(conn)
        result = {
            "vault_url": conn.url,
            "vault_name": info.get("vault_name"),
            "vault_id": info.get("vault_id"),
            "user": me.get("name"),
            "role": me.get("role"),
            "tls_fingerprint": conn.tls_fingerprint,
            "config": str(path),
        }
        if as_json:
            print_json(result)
            return
        out.print(
            f"Logged in to vault [bold]{result['vault_name']}[/] at {conn.url} as"
            f" [bold]{result['user']}[/] ({result['role']})."
        )
        if conn.tls_fingerprint:
            out.print(f"Certificate pinned: {conn.tls_fingerprint}")
        out.print(f"Saved in {path}")

    run_command(body, as_json=as_json)


@app.command("logout")
def logout() -> None:
    """Forget the saved vault URL and token."""

    def body() -> None:
        path = config_path()
        if path.exists():
            path.unlink()
            out.print(f"Removed {path}")
        else:
            out.print("Not logged in.")

    run_command(body)
