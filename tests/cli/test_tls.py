"""TLS pinning of the CLI: the vault's certificate fingerprint, checked before the token leaves.

A real vault serves HTTPS with a self-signed certificate; an impostor HTTPS server with
another certificate records every request that reaches it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.agent.helpers import VaultServer, kluis
from tests.cli.conftest import cli_env


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key."""
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


@contextlib.contextmanager
def _impostor(cert: Path, key: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTPS server with another certificate; yields its URL and the request lines it received."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"{self.requestline} {self.headers.get('Authorization', '')}")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_pinned_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path / "tls", "vault")
    server = VaultServer(
        tmp_path / "tlsvault", name="tlsvault", cert=cert, tls_cert=str(cert), tls_key=str(key)
    )
    env = cli_env(tmp_path)
    try:
        server.start()
        creds = server.credentials_file(tmp_path / "creds")
        pin = json.loads(creds.read_text())["tls_fingerprint"]
        token = server.admin_token

        # The credentials file gives the URL and the pin; the saved configuration keeps both.
        logged = kluis("login", "--credentials-file", str(creds), "--token", token, "--json", env=env)
        assert logged.rc == 0, logged.stdout + logged.stderr
        assert logged.json["tls_fingerprint"] == pin and logged.json["vault_url"] == server.url
        assert kluis("policy", "list", "--json", env=env).json == []

        # Without the pin, the system's CAs do not know a self-signed certificate.
        plain = kluis(
            "policy", "list", "--vault", server.url, "--token", token, "--json", env=cli_env(tmp_path / "x")
        )
        assert plain.rc == 7 and plain.error["code"] == "TlsHandshakeFailed"
        # Trusting the certificate as a CA works as well.
        trusted = kluis(
            "login", "--vault", server.url, "--token", token, "--ca-file", str(cert), "--json",
            env=cli_env(tmp_path / "ca"),
        )  # fmt: skip
        assert trusted.rc == 0, trusted.stdout + trusted.stderr

        # A wrong pin is refused during the handshake, and the saved login stays as it was.
        bad_pin = "sha256:" + "ab" * 32
        wrong = kluis(
            "login", "--vault", server.url, "--token", token, "--tls-fingerprint", bad_pin, "--json", env=env
        )  # fmt: skip
        assert wrong.rc == 7 and wrong.error["code"] == "TlsHandshakeFailed"
        assert "pinned" in wrong.error["message"]
        assert kluis("policy", "list", env=env).rc == 0
    finally:
        server.kill()
        server.close()


def test_token_never_reaches_an_impostor(tmp_path: Path) -> None:
    real_cert, _ = _self_signed(tmp_path / "real", "vault")
    fake_cert, fake_key = _self_signed(tmp_path / "fake", "impostor")
    pin = "sha256:" + _fingerprint(real_cert)
    with _impostor(fake_cert, fake_key) as (url, seen):
        result = kluis(
            "items",
            "list",
            "--vault",
            url,
            "--token",
            "kluis_u_secret-token",
            "--json",
            env=cli_env(tmp_path),
        )
        config = tmp_path / "cli.toml"
        config.write_text(
            f'[vault]\nurl = "{url}"\ntoken = "kluis_u_secret-token"\ntls_fingerprint = "{pin}"\n'
        )
        pinned = kluis("items", "list", "--json", env=cli_env(tmp_path))
    # Unpinned: the impostor's certificate is not trusted either; pinned: the pin does not match.
    assert result.rc == 7 and result.error["code"] == "TlsHandshakeFailed"
    assert pinned.rc == 7 and pinned.error["code"] == "TlsHandshakeFailed"
    assert seen == []


def _fingerprint(cert: Path) -> str:
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    return loaded.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize("text", ["sha256:" + "AB:" * 31 + "AB", "ab" * 32])
def test_fingerprint_spellings(text: str) -> None:
    from kluis.cli.client import normalise_fingerprint

    assert normalise_fingerprint(text) == "sha256:" + "ab" * 32
