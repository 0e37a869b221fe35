"""Machines: registration, listing, removal, and the agent's heartbeat and work queue."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from kluis.vault import agent_jobs, machines
from kluis.vault.api.deps import (
    READER,
    bearer_token,
    get_ctx,
    get_principal,
    machine_self,
    optional_principal,
    require,
)
from kluis.vault.auth import Principal, Role, authenticate
from kluis.vault.context import VaultContext
from kluis.vault.db.models import GcState, Machine
from kluis.vault.db.types import utcnow

router = APIRouter(prefix="/machines", tags=["machines"])
MAX_WAIT = 60
# How often the database is checked for work queued by other vault processes (one query for
# all polls waiting in this process; see watch_database).
DB_POLL_SECONDS = 2.0
log = logging.getLogger("kluis.vault")


class KeySetIn(BaseModel):
    """A wrapped key set: the ``keys/<id>`` object's id and JSON text."""

    id: str = Field(min_length=1, max_length=64)
    body: str = Field(min_length=2, max_length=65536)


class RegisterRequest(BaseModel):
    """What an agent sends to register (with vault credentials or an Operator token)."""

    hostname: str = Field(min_length=1, max_length=253)
    os: str = Field(default="", max_length=200)
    agent_version: str = Field(default="", max_length=50)
    key_fingerprint: str = Field(
        min_length=8,
        max_length=128,
        description="Fingerprint of the unwrapped key set (MasterKeys.fingerprint())",
    )
    key_proof: str | None = Field(
        default=None,
        min_length=64,
        max_length=64,
        description="MasterKeys.registration_proof() of the unwrapped key set: proves the passphrase"
        " on re-registration (the fingerprint is public). The vault keeps only its SHA-256.",
    )
    key_set: KeySetIn | None = None
    machine_id: str | None = Field(
        default=None, max_length=32, description="The id of an earlier registration"
    )
    credentials: str | None = Field(
        default=None, max_length=65536, description="Content of the credentials file"
    )
    credentials_name: str | None = Field(
        default=None, max_length=255, description="The credentials file's name"
    )


class KeyLookup(BaseModel):
    """A machine's key sets, asked for with vault credentials before re-registering."""

    credentials: str = Field(max_length=65536)
    credentials_name: str | None = Field(default=None, max_length=255)
    hostname: str | None = Field(default=None, max_length=253)
    machine_id: str | None = Field(default=None, max_length=32)


class Extension(BaseModel):
    """One extension's handler state as the agent reports it."""

    name: str = Field(max_length=100)
    version: str = Field(default="", max_length=50)
    state: str = Field(max_length=40, description="e.g. Installed, Enabled, Failed, NotInstalled")
    message: str = Field(default="", max_length=1000)


class Heartbeat(BaseModel):
    """An agent's periodic report."""

    hostname: str = Field(min_length=1, max_length=253)
    agent_version: str = Field(default="", max_length=50)
    agent_status: str = Field(default="Ready", max_length=40)
    os: str | None = Field(default=None, max_length=200)
    extensions: list[Extension] = Field(default_factory=list, max_length=100)


@router.post("/register", summary="Register a machine (vault credentials or an Operator token)")
def register(
    body: RegisterRequest,
    ctx: VaultContext = Depends(get_ctx),
    principal: Principal | None = Depends(optional_principal),
) -> dict[str, Any]:
    """Registers or re-registers; returns the machine id and its token (shown once)."""
    reg = machines.Registration(
        hostname=body.hostname,
        os=body.os,
        agent_version=body.agent_version,
        key_fingerprint=body.key_fingerprint,
        key_proof=body.key_proof,
        key_id=body.key_set.id if body.key_set else None,
        key_body=body.key_set.body if body.key_set else None,
        machine_id=body.machine_id,
        credentials=body.credentials,
        credentials_name=body.credentials_name,
    )
    with ctx.db.write() as s:
        return machines.register(s, ctx.config, reg, principal)


@router.post("/register/keys", summary="Key sets of a registered machine, for re-registration")
def registration_keys(body: KeyLookup, ctx: VaultContext = Depends(get_ctx)) -> list[dict[str, Any]]:
    """The wrapped key sets, so the agent can prove the passphrase by unwrapping one."""
    with ctx.db.read() as s:
        return machines.key_sets_for_registration(
            s, ctx.config, body.credentials, body.credentials_name, body.hostname, body.machine_id
        )


@router.get("", summary="List machines")
def list_machines(
    ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(READER)
) -> list[dict[str, Any]]:
    """Every registered machine with its status."""
    now = utcnow()
    with ctx.db.read() as s:
        rows = s.scalars(select(Machine).where(Machine.deleted_at.is_(None)).order_by(Machine.hostname))
        return [machines.machine_dict(m, ctx.config, now) for m in rows]


@router.get("/{machine_id}", summary="Show a machine")
def show_machine(
    machine_id: str, ctx: VaultContext = Depends(get_ctx), _p: Principal = Depends(READER)
) -> dict[str, Any]:
    """One machine with its status and extension states."""
    with ctx.db.read() as s:
        return machines.machine_dict(machines.get_machine(s, machine_id), ctx.config)


@router.delete("/{machine_id}", status_code=204, summary="Remove a machine that holds no data")
def remove_machine(
    machine_id: str,
    ctx: VaultContext = Depends(get_ctx),
    _p: Principal = Depends(require(Role.CONTRIBUTOR, "remove machines")),
) -> None:
    """Removes the registration and revokes the machine's token."""
    with ctx.db.write() as s:
        machines.remove(s, machine_id)


@router.get("/{machine_id}/keys", summary="The machine's wrapped key sets")
def machine_keys(
    machine_id: str, ctx: VaultContext = Depends(get_ctx), principal: Principal = Depends(get_principal)
) -> list[dict[str, Any]]:
    """The machine itself or an Operator may read them (they are useless without the passphrase)."""
    if not (principal.is_machine and principal.machine_id == machine_id):
        principal.require(Role.OPERATOR, "read a machine's key sets")
    with ctx.db.read() as s:
        machines.get_machine(s, machine_id)
        return machines.key_sets(s, machine_id)


@router.post("/{machine_id}/heartbeat", summary="Agent heartbeat")
def heartbeat(
    machine_id: str,
    body: Heartbeat,
    ctx: VaultContext = Depends(get_ctx),
    _p: Principal = Depends(machine_self("send heartbeats")),
) -> dict[str, Any]:
    """Records the agent's status; 230006 when the host name changed since registration."""
    with ctx.db.write() as s:
        return machines.heartbeat(
            s,
            ctx.config,
            machine_id,
            hostname=body.hostname,
            agent_version=body.agent_version,
            agent_status=body.agent_status,
            extensions=[e.model_dump() for e in body.extensions],
            os_name=body.os,
        )


def _claim(ctx: VaultContext, machine_id: str, token: str | None = None) -> dict[str, Any] | None:
    """Due work for the machine (claimed), else None; with ``token``, authenticates first."""
    now = utcnow()
    with ctx.db.read() as s:
        if token is not None:
            # In the same thread hop and transaction as the first look for work: a poll is
            # most of an agent's requests, and each hop to a worker thread costs more than
            # the queries (benchmarks/RESULTS-vault.md).
            authenticate(s, token).require_machine(machine_id, "take work")
        if not agent_jobs.has_work(s, machine_id, now):
            return None
    with ctx.db.write() as s:
        gc = s.scalar(select(GcState).where(GcState.machine_id == machine_id).with_for_update())
        sweeping = bool(gc and gc.sweeping and gc.lease_until and gc.lease_until > now)
        work = agent_jobs.claim(s, machine_id, now, sweeping)
    return work if work["jobs"] or work["cancel"] else None


@router.get(
    "/{machine_id}/work",
    summary="Long-poll for jobs to run and jobs to cancel",
    description="Needs the machine's own token.",
)
async def work(
    machine_id: str,
    request: Request,
    wait: float = Query(default=30, ge=0, le=MAX_WAIT, description="Seconds to wait for work"),
    ctx: VaultContext = Depends(get_ctx),
    sent: str | None = Depends(bearer_token),
) -> dict[str, Any]:
    """Answers at once when there is work, else when work arrives or ``wait`` runs out."""
    deadline = time.monotonic() + wait
    token: str | None = sent or ""  # "" is checked too: None means "already authenticated"
    event = ctx.notifier.subscribe(machine_id)
    try:
        while True:
            event.clear()
            if await request.is_disconnected():
                # The agent went away (restarted): jobs claimed now would reach nobody and hang.
                return {"jobs": [], "cancel": []}
            found = await run_in_threadpool(_claim, ctx, machine_id, token)
            token = None  # authenticated
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"jobs": [], "cancel": []}
            try:
                # Woken by this process's notifier, or by watch_database for other processes' work.
                await asyncio.wait_for(event.wait(), timeout=remaining)
            except TimeoutError:
                pass
    finally:
        ctx.notifier.unsubscribe(machine_id, event)


def _machines_with_work(ctx: VaultContext, machine_ids: list[str]) -> set[str]:
    with ctx.db.read() as s:
        return agent_jobs.machines_with_work(s, machine_ids, utcnow())


async def watch_database(ctx: VaultContext) -> None:
    """Wake the waiting polls whose machine got work from another vault process.

    Runs for the life of the process. One query every DB_POLL_SECONDS for all waiting
    polls together: a check per poll (1,000 agents: 500 transactions a second) took the
    whole process and made heartbeats wait seconds (benchmarks/RESULTS-vault.md).
    """
    while True:
        await asyncio.sleep(DB_POLL_SECONDS)
        waiting = ctx.notifier.waiting()
        if not waiting:
            continue
        try:
            found = await run_in_threadpool(_machines_with_work, ctx, waiting)
        except Exception:
            log.exception("looking for work queued by other vault processes failed")
            continue
        for machine_id in found:
            ctx.notifier.notify(machine_id)
