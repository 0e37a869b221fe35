"""Machines: registration, re-registration, heartbeats, status and removal.

A machine registers with a vault credentials file (or an Operator's token), its
host name, OS, agent version, wrapped key set and the key set's fingerprint. A
machine that registers again (same id, or same host name) must present the same
fingerprint: the agent computes it from the unwrapped keys, so only the holder of
the passphrase (or the KEK file) can take a machine's registration over.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kluis.catalog import KluisError
from kluis.vault import credentials
from kluis.vault.auth import Principal, Role, issue_machine_token, revoke_machine_tokens
from kluis.vault.config import VaultConfig
from kluis.vault.db.models import GcState, KeySet, Machine, ProtectedItem, VaultMeta
from kluis.vault.db.types import utcnow

_HEX = re.compile(r"^[0-9a-f]+$")
_KEY_ID = re.compile(r"^[0-9a-f]{1,64}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,252})$")
# Items in these states still hold recovery points.
HOLDING_STATES = ("Protected", "ProtectionStopped", "SoftDeleted")


@dataclass(frozen=True)
class Registration:
    """What an agent sends to register."""

    hostname: str
    os: str
    agent_version: str
    key_fingerprint: str
    key_id: str | None = None
    key_body: str | None = None
    machine_id: str | None = None
    credentials: str | None = None
    credentials_name: str | None = None
    key_proof: str | None = None


def proof_hash(proof: str) -> str:
    """What the vault keeps of a registration proof."""
    return hashlib.sha256(proof.encode()).hexdigest()


def _proof_matches(machine: Machine, reg: Registration) -> bool:
    if machine.key_proof_hash is None:
        return True  # registered before proofs (older agent): the fingerprint is all there is
    offered = proof_hash(reg.key_proof) if reg.key_proof is not None else ""
    return hmac.compare_digest(offered, machine.key_proof_hash)


def _invalid(reason: str) -> KluisError:
    return KluisError("ValidationFailed", reason=reason)


def check_registration(reg: Registration) -> None:
    """Field checks that need no database."""
    if not _HOSTNAME.match(reg.hostname):
        raise _invalid(f"host name {reg.hostname!r} is not a valid host name")
    fp = reg.key_fingerprint
    if not (8 <= len(fp) <= 128 and _HEX.match(fp)):
        raise _invalid("key_fingerprint must be 8 to 128 lower-case hex digits")
    if reg.key_proof is not None and not (len(reg.key_proof) == 64 and _HEX.match(reg.key_proof)):
        raise _invalid("key_proof must be 64 lower-case hex digits")
    if (reg.key_id is None) != (reg.key_body is None):
        raise _invalid("key_set needs both id and body")
    if reg.key_id is not None and not _KEY_ID.match(reg.key_id):
        raise _invalid("key_set.id must be 1 to 64 lower-case hex digits")
    if reg.key_body is not None:
        try:
            body = json.loads(reg.key_body)
        except ValueError:
            raise _invalid("key_set.body is not JSON") from None
        if not isinstance(body, dict):
            raise _invalid("key_set.body must be a JSON object")
        if "fingerprint" in body and body["fingerprint"] != fp:
            raise _invalid("key_set.body names another fingerprint than key_fingerprint")


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.2.10"`` -> (1, 2, 10); non-numeric parts end the comparison."""
    out: list[int] = []
    for part in re.split(r"[.+-]", version):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def is_outdated(agent_version: str, latest: str) -> bool:
    """Whether an agent is older than the latest version the vault knows."""
    return bool(agent_version) and version_tuple(agent_version) < version_tuple(latest)


def status_of(machine: Machine, config: VaultConfig, now: dt.datetime | None = None) -> str:
    """Registered (never heard from), Online, Unresponsive (missed heartbeats) or Deleted."""
    if machine.deleted_at is not None:
        return "Deleted"
    if machine.last_heartbeat_at is None:
        return "Registered"
    silence = ((now or utcnow()) - machine.last_heartbeat_at).total_seconds()
    if silence > config.heartbeat_interval * config.unresponsive_after:
        return "Unresponsive"
    return "Online"


def machine_dict(machine: Machine, config: VaultConfig, now: dt.datetime | None = None) -> dict[str, Any]:
    """The API shape of a machine."""
    return {
        "id": machine.id,
        "hostname": machine.hostname,
        "os": machine.os,
        "agent_version": machine.agent_version,
        "latest_agent_version": config.latest_agent_version,
        "agent_outdated": is_outdated(machine.agent_version, config.latest_agent_version),
        "status": status_of(machine, config, now),
        "agent_status": machine.agent_status,
        "extensions": machine.extensions or [],
        "registered_at": machine.registered_at.isoformat(),
        "last_heartbeat_at": machine.last_heartbeat_at.isoformat() if machine.last_heartbeat_at else None,
        "key_fingerprint": machine.key_fingerprint,
    }


def get_machine(session: Session, machine_id: str) -> Machine:
    """A machine that is not removed; ResourceNotFound otherwise."""
    machine = session.get(Machine, machine_id)
    if machine is None or machine.deleted_at is not None:
        raise KluisError("ResourceNotFound", kind="machine", name=machine_id)
    return machine


def register(
    session: Session, config: VaultConfig, reg: Registration, principal: Principal | None
) -> dict[str, Any]:
    """Register (or re-register) a machine and issue its token.

    Authorised by an Operator's token or by valid vault credentials.
    """
    check_registration(reg)
    if principal is not None and not principal.is_machine:
        principal.require(Role.OPERATOR, "register machines")
    elif reg.credentials is not None:
        creds = credentials.parse(reg.credentials, reg.credentials_name)
        credentials.verify(session, config, creds, reg.credentials_name)
    else:
        raise KluisError(
            "AuthTokenInvalid", reason="neither vault credentials nor an Operator token was sent"
        )
    # Serialise registrations (limit check and insert) through one row lock; SQLite's
    # write lock already does this.
    session.scalar(select(VaultMeta).where(VaultMeta.key == "vault_id").with_for_update())
    existing: Machine | None = None
    if reg.machine_id:
        existing = session.get(Machine, reg.machine_id)
        if existing is not None and existing.deleted_at is not None:
            existing = None
    if existing is None:
        existing = session.scalar(
            select(Machine)
            .where(Machine.hostname == reg.hostname, Machine.deleted_at.is_(None))
            .order_by(Machine.registered_at.desc())
            .limit(1)
        )
    now = utcnow()
    if existing is not None:
        # Both checks always run and fail alike: the answer does not say which one failed.
        same_fingerprint = hmac.compare_digest(existing.key_fingerprint, reg.key_fingerprint)
        if not (_proof_matches(existing, reg) and same_fingerprint):
            raise KluisError("MachineKeySetMismatch", machine=existing.hostname, offered=reg.key_fingerprint)
        if existing.key_proof_hash is None and reg.key_proof is not None:
            existing.key_proof_hash = proof_hash(reg.key_proof)
        existing.hostname = reg.hostname
        existing.os = reg.os
        existing.agent_version = reg.agent_version
        machine = existing
        reregistered = True
    else:
        count = session.scalar(select(func.count()).select_from(Machine).where(Machine.deleted_at.is_(None)))
        if (count or 0) >= config.max_machines:
            raise KluisError("MachineLimitReached", count=count, limit=config.max_machines)
        machine = Machine(
            hostname=reg.hostname,
            os=reg.os,
            agent_version=reg.agent_version,
            key_fingerprint=reg.key_fingerprint,
            key_proof_hash=proof_hash(reg.key_proof) if reg.key_proof is not None else None,
            registered_at=now,
        )
        session.add(machine)
        session.flush()
        session.add(GcState(machine_id=machine.id))
        reregistered = False
    if reg.key_id is not None and reg.key_body is not None:
        keyset = session.get(KeySet, (machine.id, reg.key_id))
        if keyset is None:
            session.add(KeySet(machine_id=machine.id, key_id=reg.key_id, body=reg.key_body))
        elif keyset.body != reg.key_body:
            raise KluisError("RepoObjectConflict", name=f"keys/{reg.key_id}")
    token = issue_machine_token(session, machine.id)
    session.flush()
    return {
        "machine_id": machine.id,
        "token": token,
        "reregistered": reregistered,
        "vault_id": config.vault_id,
        "vault_name": config.vault_name,
        "heartbeat_interval": config.heartbeat_interval,
        "latest_agent_version": config.latest_agent_version,
        "agent_outdated": is_outdated(reg.agent_version, config.latest_agent_version),
    }


def key_sets_for_registration(
    session: Session,
    config: VaultConfig,
    creds_text: str,
    creds_name: str | None,
    hostname: str | None,
    machine_id: str | None,
) -> list[dict[str, Any]]:
    """The wrapped key sets of an existing machine, for an agent that must re-register.

    The agent unwraps one with the passphrase to compute the fingerprint it then
    registers with. Needs valid credentials; the key sets are useless without the
    passphrase.
    """
    creds = credentials.parse(creds_text, creds_name)
    credentials.verify(session, config, creds, creds_name)
    query = select(Machine).where(Machine.deleted_at.is_(None))
    if machine_id:
        query = query.where(Machine.id == machine_id)
    elif hostname:
        query = query.where(Machine.hostname == hostname)
    else:
        raise _invalid("give hostname or machine_id")
    machine = session.scalar(query.order_by(Machine.registered_at.desc()).limit(1))
    if machine is None:
        raise KluisError("ResourceNotFound", kind="machine", name=machine_id or hostname or "")
    return [{"machine_id": machine.id, **k} for k in key_sets(session, machine.id)]


def key_sets(session: Session, machine_id: str) -> list[dict[str, Any]]:
    """A machine's wrapped key sets."""
    rows = session.scalars(select(KeySet).where(KeySet.machine_id == machine_id).order_by(KeySet.created_at))
    return [{"id": k.key_id, "body": k.body, "created_at": k.created_at.isoformat()} for k in rows]


def heartbeat(
    session: Session,
    config: VaultConfig,
    machine_id: str,
    *,
    hostname: str,
    agent_version: str,
    agent_status: str,
    extensions: list[dict[str, Any]],
    os_name: str | None = None,
) -> dict[str, Any]:
    """Record a heartbeat; 230006 when the machine now has another host name."""
    machine = get_machine(session, machine_id)
    if hostname != machine.hostname:
        raise KluisError("230006", registered=machine.hostname, current=hostname)
    now = utcnow()
    machine.last_heartbeat_at = now
    machine.agent_status = agent_status
    machine.agent_version = agent_version
    machine.extensions = extensions
    if os_name:
        machine.os = os_name
    return {
        "server_time": now.isoformat(),
        "heartbeat_interval": config.heartbeat_interval,
        "latest_agent_version": config.latest_agent_version,
        "agent_outdated": is_outdated(agent_version, config.latest_agent_version),
    }


def remove(session: Session, machine_id: str) -> None:
    """Remove a machine that holds no data any more; revokes its tokens."""
    machine = get_machine(session, machine_id)
    holding = session.scalar(
        select(func.count())
        .select_from(ProtectedItem)
        .where(ProtectedItem.machine_id == machine_id, ProtectedItem.state.in_(HOLDING_STATES))
    )
    if holding:
        raise KluisError("MachineHasProtectedItems", machine=machine.hostname, count=holding)
    machine.deleted_at = utcnow()
    revoke_machine_tokens(session, machine_id)
