"""``kluis vault init/serve/credentials/users`` and ``kluis alerts list``, run as real commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kluis.vault import credentials
from kluis.vault.config import VaultConfig
from tests.support._process import log_tail, spawn, stop
from tests.support.ports import free_port


def kluis(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the ``kluis`` command."""
    result = subprocess.run(
        [sys.executable, "-c", "from kluis.cli.main import app; app()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


@pytest.fixture(scope="module")
def initialised(new_db_url: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``kluis vault init`` on the module's backend."""
    data = tmp_path_factory.mktemp("cli-vault")
    port = free_port()
    url = new_db_url()
    args = [
        "vault",
        "init",
        "--data",
        str(data),
        "--name",
        "cli-vault",
        "--listen",
        f"127.0.0.1:{port}",
        "--json",
    ]
    if url.startswith("postgresql"):
        args += ["--db", url]
    result = json.loads(kluis(*args).stdout)
    return {"data": data, "port": port, **result}


def test_init_writes_config_and_prints_the_token_once(initialised: dict[str, Any]) -> None:
    data: Path = initialised["data"]
    cfg = VaultConfig.load(data / "vault.toml")
    assert cfg.vault_name == "cli-vault" and cfg.vault_id == initialised["vault_id"]
    assert cfg.max_machines == 50 and cfg.store_url == f"file://{data / 'store'}"
    assert (data / "store").is_dir()
    assert (os.stat(data / "vault.toml").st_mode & 0o777) == 0o600
    assert initialised["token"].startswith("kluis_u_")
    again = kluis("vault", "init", "--data", str(data), check=False)
    assert again.returncode == 2 and "VaultConfigInvalid" in again.stderr


def test_users_add_and_list(initialised: dict[str, Any]) -> None:
    data = str(initialised["data"])
    added = json.loads(
        kluis("vault", "users", "add", "olga", "--role", "operator", "--data", data, "--json").stdout
    )
    assert added["role"] == "Operator" and added["token"].startswith("kluis_u_")
    listed = json.loads(kluis("vault", "users", "list", "--data", data, "--json").stdout)
    assert {(u["name"], u["role"]) for u in listed} == {("admin", "Admin"), ("olga", "Operator")}
    bad = kluis("vault", "users", "add", "x", "--role", "boss", "--data", data, "--json", check=False)
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["code"] == "ValidationFailed"
    table = kluis("vault", "users", "list", "--data", data).stdout
    assert "olga" in table and "Operator" in table


def test_credentials_serve_and_alerts(initialised: dict[str, Any], tmp_path: Path) -> None:
    data = initialised["data"]
    out = json.loads(
        kluis("vault", "credentials", "--out", str(tmp_path), "--data", str(data), "--json").stdout
    )
    path = Path(out["file"])
    assert path.name == "cli-vault.vaultCredentials" and (os.stat(path).st_mode & 0o777) == 0o600
    creds = credentials.read_file(path)
    assert creds.vault_id == initialised["vault_id"]
    wrong = kluis("vault", "credentials", "--out", str(tmp_path / "x.txt"), "--data", str(data), check=False)
    assert wrong.returncode == 2
    # A place the file cannot be written to: coded, and the file written before stays valid.
    sealed = tmp_path / "sealed"
    sealed.mkdir()
    subprocess.run(["chattr", "+i", str(sealed)], check=True)
    try:
        refused = kluis(
            "vault", "credentials", "--out", str(sealed), "--data", str(data), "--json", check=False
        )
    finally:
        subprocess.run(["chattr", "-i", str(sealed)], check=True)
    error = json.loads(refused.stdout)["error"]
    assert refused.returncode == 3 and error["code"] == "VaultCredentialsDownloadFailed", refused.stdout
    assert f"cannot write {sealed / path.name}" in error["params"]["reason"]
    assert not list(sealed.iterdir())

    other_store = tmp_path / "elsewhere"
    port = free_port()
    log = tmp_path / "serve.log"
    args = [
        sys.executable,
        "-c",
        "from kluis.cli.main import app; app()",
        "vault",
        "serve",
        "--data",
        str(data),
        "--listen",
        f"127.0.0.1:{port}",
        "--store",
        f"file://{other_store}",
        "--log-level",
        "warning",
    ]
    process = spawn(args, log=log, env=dict(os.environ), cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log_tail(log)
            try:
                if httpx.get(base + "/api/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log_tail(log)
                time.sleep(0.05)
        body = {
            "hostname": "cli-host",
            "key_fingerprint": "ab" * 16,
            "credentials": path.read_text(),
            "credentials_name": path.name,
        }
        reg = httpx.post(base + "/api/v1/machines/register", json=body).json()
        put = httpx.put(
            f"{base}/api/v1/machines/{reg['machine_id']}/repo/objects/config",
            content=b'{"v": 1}',
            headers={"Authorization": f"Bearer {reg['token']}"},
        )
        assert put.status_code == 200
        assert (other_store / "machines" / reg["machine_id"] / "config").read_bytes() == b'{"v": 1}'
        alerts = kluis("alerts", "list", "--vault", base, "--token", initialised["token"], "--json")
        assert json.loads(alerts.stdout) == []
        denied = kluis("alerts", "list", "--vault", base, "--token", "kluis_u_wrong", "--json", check=False)
        assert denied.returncode == 3 and json.loads(denied.stdout)["error"]["code"] == "AuthTokenInvalid"
    finally:
        stop(process)


def test_serve_without_a_vault_explains(tmp_path: Path) -> None:
    result = kluis("vault", "serve", "--data", str(tmp_path / "nothing"), check=False)
    assert result.returncode == 2
    assert "VaultConfigInvalid" in result.stderr and "kluis vault init" in result.stderr


def test_serve_on_a_port_in_use_says_so_before_starting(initialised: dict[str, Any]) -> None:
    import socket

    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        started = time.monotonic()
        result = kluis(
            "vault", "serve", "--data", str(initialised["data"]), "--listen", f"127.0.0.1:{busy}", check=False
        )
        assert result.returncode == 7, result.stderr
        assert "VaultListenFailed" in result.stderr and f"127.0.0.1:{busy}" in result.stderr
        # Refused before the app starts: no database migration, no scheduler in the log.
        assert "Application startup" not in result.stderr and "Traceback" not in result.stderr
        assert time.monotonic() - started < 30
    finally:
        holder.close()


def test_serve_with_unloadable_tls_files_explains(initialised: dict[str, Any], tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-certificate.pem"
    garbage.write_text("this is not PEM\n")
    for cert, key, why in (
        (tmp_path / "missing.pem", tmp_path / "missing.key", "No such file"),
        (garbage, garbage, "cannot be loaded"),
    ):
        result = kluis(
            "vault", "serve", "--data", str(initialised["data"]), "--listen", "127.0.0.1:0",
            "--tls-cert", str(cert), "--tls-key", str(key), check=False,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        flat = result.stderr.replace("\n", "")  # the terminal width folds long paths
        assert "VaultConfigInvalid" in flat and str(cert) in flat and why in flat
        assert "Traceback" not in result.stderr
