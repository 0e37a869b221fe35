"""Registering this machine with a vault (``kluis agent register``).

The checks run in the order a user can fix them, each failure with its own code:

1. the credentials file: readable, undamaged, not renamed, not expired (ID 34513);
2. an earlier registration of this machine with another vault (ID 100110);
3. the passphrase: at least 16 characters (AgentPassphraseTooShort);
4. the scratch folder: creatable, free space, writable, temporary area (0x1FC07);
5. the path to the vault, step by step: DNS, TCP, proxy (407), TLS and the pinned
   certificate, HTTP (ID 100050, ProxyAuthenticationRequired); the vault that answers
   must be the one the file names (ID 100110);
6. the key set: a machine the vault already knows must prove the same passphrase by
   unwrapping its stored key set (RepoPassphraseIncorrect); a new machine gets a fresh
   random key set wrapped with the passphrase;
7. the KEK file is written to the scratch folder (mode 0600), then the vault registers
   the machine with the wrapped key set and its fingerprint. When the vault refuses the
   key set, the encryption key could not be set (EncryptionKeySetupFailed);
8. the agent configuration (vault, machine id, token, pinned certificate) is written
   with mode 0600, and the repository's ``config`` and ``keys/`` objects are put into the
   vault (a later job repairs this step if the network failed just then).
"""

from __future__ import annotations

import platform
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kluis import __version__
from kluis.agent import credentials, scratch
from kluis.agent.client import VaultClient, session_client
from kluis.agent.config import CA_NAME, CONFIG_NAME, DEFAULT_SCRATCH, AgentConfig, Bandwidth, current_hostname
from kluis.agent.net import Endpoint, probe
from kluis.catalog import KluisError
from kluis.engine.keys import MasterKeys, WrappedKeys, wrap, write_kek_file

MIN_PASSPHRASE = 16


@dataclass
class RegisterRequest:
    """What ``kluis agent register`` was given."""

    credentials_file: Path
    # The passphrase, or how to ask for it: asked only after the credentials file passed its checks.
    passphrase: str | Callable[[], str]
    config_dir: Path
    scratch: Path | None = None
    proxy: str | None = None
    hostname: str | None = None


def os_description() -> str:
    """The distribution and kernel, as the vault shows them."""
    try:
        name = platform.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    except OSError:
        name = platform.system()
    return f"{name} (kernel {platform.release()})"


def check_passphrase(passphrase: str) -> None:
    """AgentPassphraseTooShort for fewer than 16 characters."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise KluisError("AgentPassphraseTooShort", length=len(passphrase), minimum=MIN_PASSPHRASE)


def _existing(config_dir: Path) -> AgentConfig | None:
    if not (config_dir / CONFIG_NAME).exists():
        return None
    return AgentConfig.load(config_dir)


def _unwrap_existing(
    key_sets: list[dict[str, Any]], passphrase: str, where: str
) -> tuple[str, WrappedKeys, bytes]:
    """The stored key set the passphrase unlocks: (key id, wrapped set, KEK)."""
    for entry in key_sets:
        wrapped = WrappedKeys.from_json(f"keys/{entry['id']}", str(entry["body"]).encode())
        kek = wrapped.kek_for(passphrase)
        try:
            wrapped.unwrap(kek, repo=where)
        except KluisError as exc:
            if exc.code == "RepoPassphraseIncorrect":
                continue
            raise
        return str(entry["id"]), wrapped, kek
    raise KluisError("RepoPassphraseIncorrect", repo=where)


def register(req: RegisterRequest) -> dict[str, Any]:
    """Register (or re-register) this machine; returns what was set up."""
    # 1. The credentials file, checked here before anything goes over the network.
    creds = credentials.read(req.credentials_file)
    creds_text = creds.text

    # 2. An earlier registration with another vault.
    previous = _existing(req.config_dir)
    if previous is not None and previous.vault_id != creds.vault_id:
        raise KluisError(
            "100110",
            path=str(req.credentials_file),
            file_vault=f"{creds.vault_name} ({creds.vault_id})",
            machine_vault=f"{previous.vault_name} ({previous.vault_id})",
        )

    # 3. The passphrase.
    passphrase = req.passphrase if isinstance(req.passphrase, str) else req.passphrase()
    check_passphrase(passphrase)

    # 4. The scratch folder.
    scratch_dir = (req.scratch or (previous.scratch if previous else DEFAULT_SCRATCH)).absolute()
    scratch.check_for_registration(scratch_dir)
    layout = scratch.Layout(scratch_dir)

    # 5. The path to the vault.
    proxy = req.proxy if req.proxy is not None else (previous.proxy if previous else None)
    endpoint = Endpoint(
        url=creds.url,
        proxy=proxy or None,
        tls_fingerprint=creds.tls_fingerprint,
        ca_pem=creds.tls_certificate,
    )
    health = probe(endpoint)
    if health.get("vault_id") != creds.vault_id:
        raise KluisError(
            "100110",
            path=str(req.credentials_file),
            file_vault=f"{creds.vault_name} ({creds.vault_id})",
            machine_vault=f"{health.get('vault_name', '?')} ({health.get('vault_id', '?')}) at {creds.url}",
        )

    hostname = current_hostname(req.hostname)
    client = VaultClient(endpoint)
    try:
        # 6. The key set: the stored one (proving the passphrase) or a new one.
        machine_id = previous.machine_id if previous is not None else None
        stored = client.registration_keys(creds_text, req.credentials_file.name, hostname, machine_id)
        where = f"machine {hostname} in vault {creds.vault_name}"
        if stored:
            key_id, wrapped, kek = _unwrap_existing(stored, passphrase, where)
            keys = wrapped.unwrap(kek, repo=where)
        else:
            keys = MasterKeys.generate()
            wrapped, kek = wrap(keys, passphrase)
            key_id = secrets.token_hex(8)
        key_body = wrapped.to_json().decode()

        # 7. The KEK file first (so an unattended agent can always unlock), then the vault.
        write_kek_file(layout.kek, kek, wrapped.fingerprint)
        body = {
            "hostname": hostname,
            "os": os_description(),
            "agent_version": __version__,
            "key_fingerprint": wrapped.fingerprint,
            # The fingerprint is public; this proves to the vault that we hold the keys.
            "key_proof": keys.registration_proof(),
            "key_set": {"id": key_id, "body": key_body},
            "machine_id": stored[0]["machine_id"] if stored else machine_id,
            "credentials": creds_text,
            "credentials_name": req.credentials_file.name,
        }
        try:
            answer = client.register(body)
        except KluisError as exc:
            if exc.code in ("MachineKeySetMismatch", "RepoObjectConflict"):
                raise KluisError(
                    "EncryptionKeySetupFailed", path=str(layout.kek), detail=exc.message
                ) from None
            raise
    finally:
        client.close()

    # 8. The configuration, then the repository objects.
    req.config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_name: str | None = None
    if creds.tls_certificate:
        ca_path = req.config_dir / CA_NAME
        ca_path.write_text(creds.tls_certificate)
        ca_path.chmod(0o644)
        ca_name = CA_NAME
    cfg = AgentConfig(
        vault_id=creds.vault_id,
        vault_name=str(answer.get("vault_name") or creds.vault_name),
        vault_url=endpoint.url,
        machine_id=str(answer["machine_id"]),
        hostname=hostname,
        token=str(answer["token"]),
        key_fingerprint=wrapped.fingerprint,
        scratch=scratch_dir,
        tls_fingerprint=creds.tls_fingerprint,
        tls_certificate=ca_name,
        proxy=proxy or None,
        bandwidth=previous.bandwidth if previous else Bandwidth(),
        max_jobs=previous.max_jobs if previous else 2,
        heartbeat_interval=previous.heartbeat_interval if previous else None,
        poll_wait=previous.poll_wait if previous else 30.0,
    )
    path = cfg.save(req.config_dir / CONFIG_NAME)
    repo_ready = True
    repo_error: dict[str, Any] | None = None
    try:
        from kluis.agent.store import ensure_repository

        ensure_repository(cfg, key_id, key_body)
    except KluisError as exc:
        repo_ready = False
        repo_error = exc.to_dict()
    return {
        "vault_id": cfg.vault_id,
        "vault_name": cfg.vault_name,
        "vault_url": cfg.vault_url,
        "machine_id": cfg.machine_id,
        "hostname": hostname,
        "reregistered": bool(answer.get("reregistered")),
        "key_fingerprint": wrapped.fingerprint,
        "config": str(path),
        "kek_file": str(layout.kek),
        "scratch": str(scratch_dir),
        "agent_outdated": bool(answer.get("agent_outdated")),
        "repository_ready": repo_ready,
        "repository_error": repo_error,
    }


def unlock(cfg: AgentConfig, passphrase: str) -> dict[str, Any]:
    """Recreate the KEK file from the passphrase (the fix for ID 34506)."""
    client = session_client(cfg)
    try:
        key_sets = client.key_sets(cfg.machine_id)
    finally:
        client.close()
    where = f"machine {cfg.hostname} in vault {cfg.vault_name}"
    _key_id, wrapped, kek = _unwrap_existing(key_sets, passphrase, where)
    layout = scratch.Layout(cfg.scratch)
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_kek_file(layout.kek, kek, wrapped.fingerprint)
    return {"kek_file": str(layout.kek), "key_fingerprint": wrapped.fingerprint}
