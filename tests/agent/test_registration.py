"""``kluis agent register`` and ``status`` against a real vault, and every coded failure for real.

Each failure is produced the way a user meets it: an expired credentials file, another
vault's file, a closed port, a name that does not resolve (in a network namespace with
no network, so no query leaves the machine), a proxy answering 407, a TLS certificate
that is not the pinned one, a scratch folder on a full file system.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import stat
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import tomli_w

from tests.agent.helpers import (
    OTHER_PASSPHRASE,
    PASSPHRASE,
    AgentProc,
    VaultServer,
    fill,
    kluis,
    loop_filesystem,
    netns_available,
    rewrite_credentials,
)
from tests.agent.proxy import TestProxy
from tests.support.ports import closed_port


@pytest.fixture(scope="module")
def creds(vault: VaultServer, workdir: Path) -> Path:
    """The module's credentials file (tests that make newer ones restore it afterwards)."""
    return vault.credentials_file(workdir / "creds")


def agent(tmp_path: Path, name: str) -> AgentProc:
    """A not yet registered agent with its own directories."""
    return AgentProc(root=tmp_path / name, hostname=name, scratch=tmp_path / name / "scratch")


def test_register_status_reregister(vault: VaultServer, creds: Path, tmp_path: Path) -> None:
    a = agent(tmp_path, "reg-host-1")
    first = a.register(creds)
    assert first.rc == 0, first.stdout + first.stderr
    info = first.json
    assert info["hostname"] == "reg-host-1" and info["vault_id"] == vault.vault_id
    assert info["repository_ready"] is True and info["reregistered"] is False
    # The token and the KEK are secrets: only root may read them.
    assert stat.S_IMODE(a.config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((a.scratch / "kluis.kek").stat().st_mode) == 0o600
    assert stat.S_IMODE(a.config_dir.stat().st_mode) == 0o700

    machine = vault.ok("GET", f"/api/v1/machines/{info['machine_id']}")
    assert machine["hostname"] == "reg-host-1"
    assert machine["key_fingerprint"] == info["key_fingerprint"]
    assert machine["agent_version"] and "kernel" in machine["os"]
    # The repository's objects are in the vault, and the key set unwraps only with the passphrase.
    names = {o["name"] for o in vault.ok("GET", f"/api/v1/machines/{info['machine_id']}/repo/objects")}
    assert "config" in names and any(n.startswith("keys/") for n in names)

    status = a.cli("status", "--json").json
    assert status["vault_name"] == vault.name and status["vault_url"] == vault.url
    assert status["machine_name"] == "reg-host-1" and status["machine_id"] == info["machine_id"]
    assert status["agent_version"] and status["daemon_running"] is False
    assert status["last_heartbeat_at"] is None and status["kek_file_present"] is True

    # Re-registration proves the passphrase: same one works (same machine), another one is refused.
    again = a.register(creds)
    assert again.rc == 0, again.stdout
    assert again.json["reregistered"] is True and again.json["machine_id"] == info["machine_id"]
    wrong = a.register(creds, OTHER_PASSPHRASE)
    assert wrong.rc == 3
    assert wrong.error["code"] == "RepoPassphraseIncorrect"
    assert "reg-host-1" in wrong.error["message"]

    # The same host name from a fresh installation (no local config) must also prove it.
    fresh = AgentProc(root=tmp_path / "fresh", hostname="reg-host-1", scratch=tmp_path / "fresh" / "scratch")
    stolen = fresh.register(creds, OTHER_PASSPHRASE)
    assert stolen.error["code"] == "RepoPassphraseIncorrect"
    assert not fresh.config_file.exists()

    short = agent(tmp_path, "reg-host-2").register(creds, "too short")
    assert short.rc == 2 and short.error["code"] == "AgentPassphraseTooShort"
    assert short.error["params"] == {"length": 9, "minimum": 16}


def test_expired_credentials(vault: VaultServer, creds: Path, tmp_path: Path) -> None:
    # The file itself says it expired: refused on the machine, before any network use.
    old = rewrite_credentials(
        creds,
        tmp_path / "old" / creds.name,
        issued_at="2020-01-01T00:00:00Z",
        expires_at="2020-01-11T00:00:00Z",
    )
    local = agent(tmp_path, "exp-1").cli(
        "register",
        "--vault-credentials",
        str(old),
        "--scratch",
        str(tmp_path / "s1"),
        "--json",
        netns=netns_available(),
    )
    assert local.rc == 3 and local.error["code"] == "34513"
    assert "expired on 2020-01-11" in local.error["message"]

    # The vault's own record of the secret expired (the file still claims ten days).
    db = sqlite3.connect(vault.data / "vault.db")
    try:
        (before,) = db.execute("SELECT max(expires_at) FROM registration_secrets").fetchone()
        db.execute("UPDATE registration_secrets SET expires_at = ?", ("2020-01-11 00:00:00.000000",))
        db.commit()
        remote = agent(tmp_path, "exp-2").register(creds)
        assert remote.rc == 3 and remote.error["code"] == "34513"
        assert "expired" in remote.error["params"]["reason"]
    finally:
        db.execute("UPDATE registration_secrets SET expires_at = ?", (before,))
        db.commit()
        db.close()

    # A damaged file and a renamed one are the same code with their own reason.
    damaged = tmp_path / "damaged" / creds.name
    damaged.parent.mkdir()
    damaged.write_text(creds.read_text().replace('"secret": "', '"secret": "x'))
    result = agent(tmp_path, "exp-3").register(damaged)
    assert result.error["code"] == "34513" and "checksum" in result.error["message"]
    renamed = tmp_path / "renamed.json"
    renamed.write_text(creds.read_text())
    result = agent(tmp_path, "exp-4").register(renamed)
    assert result.error["code"] == "34513" and ".vaultCredentials" in result.error["message"]


def test_credentials_of_another_vault(vault: VaultServer, creds: Path, tmp_path: Path) -> None:
    # Vault B (never served) names vault A's address, as after a reinstallation on the same host.
    other = kluis(
        "vault",
        "init",
        "--data",
        str(tmp_path / "b"),
        "--name",
        "vault-b",
        "--listen",
        f"127.0.0.1:{vault.port}",
        "--json",
    )
    assert other.rc == 0, other.stdout + other.stderr
    (tmp_path / "bc").mkdir()
    made = kluis(
        "vault", "credentials", "--data", str(tmp_path / "b"), "--out", str(tmp_path / "bc"), "--json"
    )
    assert made.rc == 0, made.stdout + made.stderr
    b_file = next((tmp_path / "bc").glob("*.vaultCredentials"))

    result = agent(tmp_path, "other-1").register(b_file)
    assert result.rc == 3 and result.error["code"] == "100110"
    assert "vault-b" in result.error["message"] and vault.vault_id in result.error["message"]

    # A machine registered with vault A refuses vault B's file without asking anyone.
    a = agent(tmp_path, "other-2")
    assert a.register(creds).rc == 0
    again = a.cli("register", "--vault-credentials", str(b_file), "--json", netns=netns_available())
    assert again.rc == 3 and again.error["code"] == "100110"
    assert again.error["params"]["machine_vault"].startswith(vault.name)


class _NotAVault(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>hello from a web server</html>"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[int]:
    """Something on a port that is not a vault."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotAVault)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def test_cannot_connect_names_the_step(creds: Path, tmp_path: Path, web_server: int) -> None:
    port = closed_port()
    closed = rewrite_credentials(creds, tmp_path / "closed" / creds.name, url=f"http://127.0.0.1:{port}")
    result = agent(tmp_path, "net-1").register(closed)
    assert result.rc == 7 and result.error["code"] == "100050"
    assert result.error["params"]["stage"] == "TCP"
    assert "refused" in result.error["message"] and str(port) in result.error["message"]

    # HTTP: something answers, but it is not a vault.
    web = rewrite_credentials(creds, tmp_path / "web" / creds.name, url=f"http://127.0.0.1:{web_server}")
    result = agent(tmp_path, "net-3").register(web)
    assert result.error["code"] == "100050" and result.error["params"]["stage"] == "HTTP"
    assert "404" in result.error["message"]


def test_name_that_does_not_resolve(creds: Path, tmp_path: Path) -> None:
    if not netns_available():
        pytest.skip("network namespaces are not available here (unshare --net fails)")
    # DNS: in a network namespace without any network, the lookup fails on the machine itself.
    unknown = rewrite_credentials(
        creds, tmp_path / "dns" / creds.name, url="http://vault.kluis-test.invalid:8400"
    )
    a = agent(tmp_path, "net-2")
    a.root.mkdir(parents=True)
    (a.root / "passphrase").write_text(PASSPHRASE)
    result = a.cli(
        "register",
        "--vault-credentials",
        str(unknown),
        "--passphrase-file",
        str(a.root / "passphrase"),
        "--scratch",
        str(a.scratch),
        "--json",
        netns=True,
    )
    assert result.rc == 7 and result.error["code"] == "100050", result.stdout + result.stderr
    assert result.error["params"]["stage"] == "DNS"
    assert "vault.kluis-test.invalid" in result.error["message"]


def test_proxy_authentication(vault: VaultServer, creds: Path, tmp_path: Path) -> None:
    with TestProxy() as proxy:
        result = agent(tmp_path, "proxy-1").register(creds, PASSPHRASE, "--proxy", proxy.url)
        assert result.rc == 7 and result.error["code"] == "ProxyAuthenticationRequired"
        assert f"127.0.0.1:{proxy.port}" in result.error["message"]
        assert any(vault.url in line for line in proxy.seen), proxy.seen
    # With the right credentials in the proxy URL, registration goes through the proxy.
    with TestProxy(("kluis", "s3cret")) as proxy:
        a = agent(tmp_path, "proxy-2")
        wrong = a.register(creds, PASSPHRASE, "--proxy", f"http://kluis:Wr0ngPw@127.0.0.1:{proxy.port}")
        assert wrong.error["code"] == "ProxyAuthenticationRequired"
        assert "Wr0ngPw" not in wrong.stdout  # the password is not repeated
        done = a.register(creds, PASSPHRASE, "--proxy", proxy.url)
        assert done.rc == 0, done.stdout + done.stderr
        assert len(proxy.seen) >= 3
        assert tomllib.loads(a.config_file.read_text())["agent"]["proxy"] == proxy.url


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_vault_is_pinned(tmp_path: Path) -> None:
    # A vault serving HTTPS with its own certificate; the credentials file carries it.
    cert, key = _self_signed(tmp_path / "tls", "vault")
    server = VaultServer(
        tmp_path / "tlsvault", name="tlsvault", cert=cert, tls_cert=str(cert), tls_key=str(key)
    )
    try:
        server.start()
        file = server.credentials_file(tmp_path / "tlscreds")
        body = json.loads(file.read_text())
        assert body["url"].startswith("https://") and body["tls_fingerprint"].startswith("sha256:")

        a = agent(tmp_path, "tls-1")
        done = a.register(file)
        assert done.rc == 0, done.stdout + done.stderr
        assert (a.config_dir / "vault-ca.pem").read_text() == cert.read_text()
        assert a.cli("status", "--check", "--json").json["check"]["ok"] is True

        # Another certificate than the pinned one: refused at the TLS step.
        other_cert, _ = _self_signed(tmp_path / "tls2", "impostor")
        forged = rewrite_credentials(
            file,
            tmp_path / "forged" / file.name,
            tls_certificate=other_cert.read_text(),
            tls_fingerprint="sha256:" + "0" * 64,
        )
        result = agent(tmp_path, "tls-2").register(forged)
        assert result.rc == 7 and result.error["code"] == "100050"
        assert result.error["params"]["stage"] == "TLS"
        # The right certificate but another pinned fingerprint: refused too.
        repinned = rewrite_credentials(
            file, tmp_path / "repinned" / file.name, tls_fingerprint="sha256:" + "1" * 64
        )
        result = agent(tmp_path, "tls-3").register(repinned)
        assert result.error["params"]["stage"] == "TLS" and "pinned" in result.error["message"]
    finally:
        server.kill()
        server.db.dispose()


def test_scratch_folder_on_full_file_system(creds: Path, tmp_path: Path) -> None:
    try:
        fs = loop_filesystem(tmp_path, size_mib=24)
        mnt = fs.__enter__()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"no loop devices here: {exc}")
    try:
        fill(mnt)
        a = agent(tmp_path, "full-1")
        a.root.mkdir(parents=True)
        (a.root / "passphrase").write_text(PASSPHRASE)
        result = a.cli(
            "register",
            "--vault-credentials",
            str(creds),
            "--passphrase-file",
            str(a.root / "passphrase"),
            "--scratch",
            str(mnt / "scratch"),
            "--json",
        )
        assert result.rc == 9 and result.error["code"] == "0x1FC07", result.stdout + result.stderr
        message = result.error["message"]
        assert str(mnt / "scratch") in message and "free" in message and "16.0 MiB" in message
        assert not (a.config_file.exists())
    finally:
        fs.__exit__(None, None, None)


def test_vault_refuses_the_key_set(vault: VaultServer, creds: Path, tmp_path: Path) -> None:
    p = agent(tmp_path, "keyset-1")
    assert p.register(creds).rc == 0
    n = agent(tmp_path, "keyset-2")
    assert n.register(creds, OTHER_PASSPHRASE).rc == 0
    # An administrator removed P's machine from the vault; P's own configuration stayed. When P now
    # registers under N's name, nothing of P is found, a new key set is made, and the vault refuses
    # it for a name that a machine with another key set holds.
    vault.ok("DELETE", f"/api/v1/machines/{p.machine_id()}")
    result = p.cli(
        "register",
        "--vault-credentials",
        str(creds),
        "--passphrase-file",
        str(p.root / "passphrase"),
        "--json",
        hostname="keyset-2",
    )
    assert result.rc == 3 and result.error["code"] == "EncryptionKeySetupFailed", result.stdout
    assert result.error["params"]["path"] == str(p.scratch / "kluis.kek")
    assert "keyset-2" in result.error["message"]  # the vault's reason, as detail
    # N is untouched and still unlocks with its own passphrase.
    assert n.register(creds, OTHER_PASSPHRASE).json["reregistered"] is True


def test_config_set_and_show(creds: Path, tmp_path: Path) -> None:
    a = agent(tmp_path, "cfg-1")
    assert a.register(creds).rc == 0
    assert a.cli("config", "set", "work_hours_limit", "2MiB").rc == 0
    assert a.cli("config", "set", "work_days", "mon,wed").rc == 0
    bad = a.cli("config", "set", "work_start", "25:00")
    assert bad.rc == 2 and "work_start" in bad.stdout + bad.stderr
    # A proxy the agent could not talk to is refused here, not at the next connection.
    for proxy in ("not a url", "socks5://proxy:1080", "http://proxy:99999", "http://:3128"):
        refused = a.cli("config", "set", "proxy", proxy)
        assert refused.rc == 2 and "agent.proxy" in refused.stdout + refused.stderr, proxy
    assert a.cli("config", "set", "proxy", "http://user:pw@proxy.example:3128").rc == 0
    assert a.cli("config", "set", "proxy", "").rc == 0
    moved_to = tmp_path / "new-scratch"
    assert a.cli("config", "set", "scratch", str(moved_to)).rc == 0
    shown = a.cli("config", "show", "--json").json
    assert shown["bandwidth"]["work_hours_limit"] == 2 * 1024 * 1024
    assert shown["bandwidth"]["work_days"] == ["mon", "wed"] and shown["bandwidth"]["work_start"] == "08:00"
    assert shown["agent"]["scratch"] == str(moved_to) and shown["machine"]["token"] == "***"
    # The KEK file moved with the folder, so the agent still unlocks its keys.
    assert (moved_to / "kluis.kek").is_file() and not (a.scratch / "kluis.kek").exists()
    assert a.cli("status", "--json").json["kek_file_present"] is True


def test_config_set_keeps_sections_it_does_not_model(creds: Path, tmp_path: Path) -> None:
    a = agent(tmp_path, "cfg-2")
    assert a.register(creds).rc == 0
    path = a.config_dir / "agent.toml"
    # An admin's own additions: the extensions switch with an extra key, and a section of its own.
    doc = tomllib.loads(path.read_text())
    doc["extensions"] = {"enable": False, "note": "kept"}
    doc["site"] = {"rack": "B4"}
    path.write_text(tomli_w.dumps(doc))
    assert a.cli("config", "set", "poll_wait", "12").rc == 0
    shown = a.cli("config", "show", "--json").json
    assert shown["extensions"] == {"enable": False, "note": "kept"}
    assert shown["site"] == {"rack": "B4"} and shown["agent"]["poll_wait"] == 12
    assert a.cli("config", "set", "extensions", "on").rc == 0
    assert a.cli("config", "show", "--json").json["extensions"] == {"enable": True, "note": "kept"}
    bad = a.cli("config", "set", "extensions", "maybe")
    assert bad.rc == 2 and "extensions" in bad.stdout + bad.stderr
