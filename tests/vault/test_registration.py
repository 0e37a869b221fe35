"""Vault credentials and machine registration, heartbeats and status (seed 003: 34513, 100110, 230006)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update

from kluis.vault import credentials
from kluis.vault.db.models import Machine, RegistrationSecret
from tests.vault.helpers import Agent, VaultServer


def _code(response: object) -> str:
    return str(response.json()["code"])  # type: ignore[attr-defined]


def test_register_and_heartbeat(vault: VaultServer) -> None:
    agent = Agent(vault)
    response = agent.register()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["vault_id"] == vault.config.vault_id
    assert body["token"].startswith("kluis_m_")
    assert body["reregistered"] is False
    machine = vault.ok("GET", f"/api/v1/machines/{agent.machine_id}")
    assert machine["status"] == "Registered"
    assert machine["hostname"] == agent.hostname
    hb = agent.heartbeat(
        extensions=[{"name": "snapshot", "version": "1.2", "state": "Failed", "message": "boom"}]
    )
    assert hb.status_code == 200, hb.text
    machine = vault.ok("GET", f"/api/v1/machines/{agent.machine_id}")
    assert machine["status"] == "Online"
    assert machine["extensions"][0]["state"] == "Failed"
    assert machine["agent_status"] == "Ready"
    keys = agent.call("GET", f"/api/v1/machines/{agent.machine_id}/keys").json()
    assert keys[0]["id"] == "00aa11bb22cc33dd"


def test_unresponsive_after_missed_heartbeats(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    assert agent.heartbeat().status_code == 200
    # heartbeat_interval 2 s x unresponsive_after 2 = silent for more than 4 s.
    with vault.db.write() as s:
        s.execute(
            update(Machine)
            .where(Machine.id == agent.machine_id)
            .values(last_heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
        )
    assert vault.ok("GET", f"/api/v1/machines/{agent.machine_id}")["status"] == "Unresponsive"
    agent.heartbeat()
    assert vault.ok("GET", f"/api/v1/machines/{agent.machine_id}")["status"] == "Online"


def test_outdated_agent_is_flagged(vault: VaultServer) -> None:
    agent = Agent(vault)
    body = agent.register(agent_version="0.0.9").json()
    assert body["agent_outdated"] is True
    assert vault.ok("GET", f"/api/v1/machines/{agent.machine_id}")["agent_outdated"] is True
    hb = agent.heartbeat(agent_version=vault.config.latest_agent_version).json()
    assert hb["agent_outdated"] is False


def test_renamed_machine_gets_230006_with_both_fixes(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    old = agent.hostname
    response = agent.heartbeat(hostname="renamed-host")
    assert response.status_code == 409
    err = response.json()
    assert err["code"] == "230006"
    assert old in err["message"] and "renamed-host" in err["message"]
    assert len(err["actions"]) == 2  # rename back, or register again under the new name
    # Fix 2: register again under the new name, same key set: same machine, new token.
    agent.hostname = "renamed-host"
    again = agent.register(machine_id=agent.machine_id)
    assert again.status_code == 200, again.text
    assert again.json()["reregistered"] is True
    assert agent.heartbeat().status_code == 200


def test_reregistration_must_prove_the_same_key_set(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    first_token, machine_id = agent.token, agent.machine_id
    impostor = Agent(vault, hostname=agent.hostname)  # same name, other keys
    response = impostor.register()
    assert response.status_code == 403
    assert _code(response) == "MachineKeySetMismatch"
    again = Agent(vault, hostname=agent.hostname, fingerprint=agent.fingerprint, proof=agent.proof)
    ok = again.register()
    assert ok.status_code == 200 and ok.json()["machine_id"] == machine_id
    # The old token was replaced.
    stale = vault.request("GET", "/api/v1/me", token=first_token)
    assert stale.status_code == 401 and _code(stale) == "AuthTokenInvalid"
    assert vault.request("GET", "/api/v1/me", token=again.token).json()["machine_id"] == machine_id
    # An agent that lost its state gets the key sets with valid credentials.
    keys = vault.ok(
        "POST",
        "/api/v1/machines/register/keys",
        token="",
        json={"credentials": vault.credentials()["content"], "hostname": agent.hostname},
    )
    assert keys[0]["machine_id"] == machine_id


def test_the_public_fingerprint_alone_cannot_take_a_machine_over(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    creds = vault.credentials()["content"]
    # Anyone with vault credentials reads the key file, which names its fingerprint in clear.
    keys = vault.ok(
        "POST",
        "/api/v1/machines/register/keys",
        token="",
        json={"credentials": creds, "hostname": agent.hostname},
    )
    public = json.loads(keys[0]["body"])["fingerprint"]
    assert public == agent.fingerprint
    for proof in (None, secrets.token_hex(32)):
        thief = Agent(vault, hostname=agent.hostname, fingerprint=public, proof=proof)
        response = thief.register(machine_id=agent.machine_id)
        assert response.status_code == 403 and _code(response) == "MachineKeySetMismatch"
    # An Operator token does not skip the proof either.
    body = {"hostname": agent.hostname, "key_fingerprint": public, "key_proof": secrets.token_hex(32)}
    response = vault.request(
        "POST", "/api/v1/machines/register", token=vault.token_for("Operator"), json=body
    )
    assert response.status_code == 403 and _code(response) == "MachineKeySetMismatch"
    # The machine's own token still works: nothing was taken over.
    assert agent.heartbeat().status_code == 200
    malformed = Agent(vault, hostname=agent.hostname, fingerprint=public, proof="xyz" * 21 + "x").register()
    assert malformed.status_code == 422 and _code(malformed) == "ValidationFailed"


def test_a_machine_registered_without_a_proof_keeps_the_first_proof_it_sends(vault: VaultServer) -> None:
    old = Agent(vault, proof=None)
    assert old.register().status_code == 200  # an older agent: no proof, fingerprint only
    upgraded = Agent(vault, hostname=old.hostname, fingerprint=old.fingerprint)
    assert upgraded.register().status_code == 200
    # From now on the proof is needed.
    again = Agent(vault, hostname=old.hostname, fingerprint=old.fingerprint)
    response = again.register()
    assert response.status_code == 403 and _code(response) == "MachineKeySetMismatch"
    same = Agent(vault, hostname=old.hostname, fingerprint=old.fingerprint, proof=upgraded.proof)
    assert same.register().status_code == 200


def test_operator_token_registers_without_credentials(vault: VaultServer) -> None:
    agent = Agent(vault)
    body = {"hostname": agent.hostname, "key_fingerprint": agent.fingerprint}
    response = vault.request(
        "POST", "/api/v1/machines/register", token=vault.token_for("Operator"), json=body
    )
    assert response.status_code == 200, response.text
    refused = vault.request("POST", "/api/v1/machines/register", token=vault.token_for("Reader"), json=body)
    assert refused.status_code == 403 and _code(refused) == "RoleForbidden"
    nothing = vault.request("POST", "/api/v1/machines/register", token="", json=body)
    assert nothing.status_code == 401


# -- credentials files ----------------------------------------------------------------------


def test_superseded_credentials_are_34513(vault: VaultServer) -> None:
    old = vault.credentials()
    new = vault.credentials()
    response = Agent(vault).register(old)
    assert response.status_code == 400 and _code(response) == "34513"
    assert "newer" in response.json()["message"]
    assert Agent(vault).register(new).status_code == 200
    # The newest file registers several machines while it is valid (seed 003).
    assert Agent(vault).register(new).status_code == 200


def test_expired_credentials_are_34513(vault: VaultServer) -> None:
    creds = vault.credentials()
    with vault.db.write() as s:
        s.execute(
            update(RegistrationSecret).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    response = Agent(vault).register(creds)
    assert response.status_code == 400 and _code(response) == "34513"
    assert "expired" in response.json()["message"]


def test_corrupted_credentials_are_34513(vault: VaultServer) -> None:
    creds = vault.credentials()
    body = json.loads(creds["content"])
    body["expires_at"] = "2099-01-01T00:00:00Z"  # edited by hand: the checksum no longer matches
    for content in (json.dumps(body), creds["content"][: len(creds["content"]) // 2], "not json at all"):
        response = Agent(vault).register({"file_name": creds["file_name"], "content": content})
        assert response.status_code == 400 and _code(response) == "34513", response.text
        assert "damaged" in response.json()["message"]
    assert Agent(vault).register(creds).status_code == 200


def test_renamed_extension_is_34513(vault: VaultServer) -> None:
    creds = vault.credentials()
    for name in ("testvault.vaultCredentials.txt", "testvault.json", "credentials"):
        response = Agent(vault).register({"file_name": name, "content": creds["content"]})
        assert response.status_code == 400 and _code(response) == "34513"
    assert creds["file_name"] == "testvault.vaultCredentials"


def test_credentials_of_another_vault_are_100110(vault: VaultServer) -> None:
    creds = vault.credentials()
    body = json.loads(creds["content"])
    body["vault_id"] = "0" * 32
    body["vault_name"] = "elsewhere"
    body["checksum"] = credentials.checksum(body)  # a well-formed file of another vault
    response = Agent(vault).register({"file_name": "elsewhere.vaultCredentials", "content": json.dumps(body)})
    assert response.status_code == 409 and _code(response) == "100110"
    assert "elsewhere" in response.json()["message"]


def test_credentials_file_reader_checks_extension(tmp_path: Path, vault: VaultServer) -> None:
    creds = vault.credentials()
    good = tmp_path / creds["file_name"]
    good.write_text(creds["content"])
    assert credentials.read_file(good).vault_id == vault.config.vault_id
    bad = good.with_suffix(".txt")
    bad.write_text(creds["content"])
    with pytest.raises(Exception) as info:
        credentials.read_file(bad)
    assert getattr(info.value, "code", None) == "34513"


def test_machine_limit(make_vault: Callable[..., VaultServer]) -> None:
    small = make_vault(max_machines=2).start()
    try:
        creds = small.credentials()
        assert Agent(small).register(creds).status_code == 200
        second = Agent(small)
        assert second.register(creds).status_code == 200
        third = Agent(small).register(creds)
        assert third.status_code == 409 and _code(third) == "MachineLimitReached"
        assert third.json()["params"] == {"count": 2, "limit": 2}
        # Re-registering a known machine is not a new machine.
        assert (
            Agent(small, hostname=second.hostname, fingerprint=second.fingerprint, proof=second.proof)
            .register(creds)
            .status_code
            == 200
        )
        # Removing one frees a place.
        small.ok("DELETE", f"/api/v1/machines/{second.machine_id}")
        assert Agent(small).register(creds).status_code == 200
    finally:
        small.stop()


def test_removed_machine_token_stops_working(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    vault.ok("DELETE", f"/api/v1/machines/{agent.machine_id}")
    response = agent.heartbeat()
    assert response.status_code == 401 and _code(response) == "AuthTokenInvalid"
    assert vault.request("GET", f"/api/v1/machines/{agent.machine_id}").status_code == 404
