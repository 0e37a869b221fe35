"""HTTPS: the vault serves TLS; credentials carry its fingerprint and certificate for pinning."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kluis.agent.net import Endpoint
from kluis.catalog import KluisError
from kluis.stores.vault import RawTransfers, VaultStore
from tests.vault.helpers import Agent, VaultServer


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kluis test vault")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "vault.crt", directory / "vault.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_with_pinned_certificate(make_vault: Callable[..., VaultServer], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    vault = make_vault(tls_cert=str(cert), tls_key=str(key)).start()
    try:
        assert vault.url.startswith("https://")
        creds = vault.credentials()
        body = json.loads(creds["content"])
        der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
        assert body["tls_fingerprint"] == "sha256:" + hashlib.sha256(der).hexdigest()
        assert body["tls_certificate"] == cert.read_text()
        assert body["url"] == vault.url
        agent = Agent(vault)
        assert agent.register(creds).status_code == 200
        store = agent.store()
        store.put("config", b'{"version": 1}')
        assert store.get("config") == b'{"version": 1}'
        store.close()
        # Without the pinned certificate the connection is refused, as a catalog error.
        unpinned = VaultStore(vault.url, agent.machine_id, agent.token, retries=1)
        with pytest.raises(KluisError) as info:
            unpinned.get("config")
        assert info.value.code == "TlsHandshakeFailed"
        unpinned.close()
        # Pack reads over http.client check the same pin; a wrong one is handed back.
        pinned = Endpoint(vault.url, tls_fingerprint=body["tls_fingerprint"], ca_pem=cert.read_text())
        path = f"/api/v1/machines/{agent.machine_id}/repo/objects/config"
        auth = {"Authorization": f"Bearer {agent.token}"}
        raw = RawTransfers(
            vault.url, auth, timeout=10, ssl_context=pinned.ssl_context(), check_peer=pinned.check_pin
        )
        assert raw.get(path, {}) == b'{"version": 1}' and raw.served == 1
        raw.close()
        other = Endpoint(vault.url, tls_fingerprint="sha256:" + "0" * 64, ca_pem=cert.read_text())
        wrong = RawTransfers(
            vault.url, auth, timeout=10, ssl_context=other.ssl_context(), check_peer=other.check_pin
        )
        assert wrong.get(path, {}) is None and wrong.declined == 1
        wrong.close()
    finally:
        vault.stop()
