"""Retention and garbage collection as jobs run by the vault, and the GC safety rule."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from typing import Any

import pytest
from sqlalchemy import select, update

from kluis.engine.format import encode_point, encode_refs, pack_name, point_name, refs_name
from kluis.vault.db.models import GcState, IndexFile, ProtectedItem
from tests.vault.helpers import Agent, VaultServer, make_index, make_pack

FINAL = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")


@pytest.fixture(scope="module")
def vault(make_vault: Any) -> VaultServer:
    """A vault whose GC has no grace period, so fresh test packs can be collected."""
    server: VaultServer = make_vault(gc_grace_hours=0.0)
    return server.start()


def wait_job(vault: VaultServer, job_id: str, timeout: float = 20) -> dict[str, Any]:
    """Poll until the job has ended."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = vault.ok("GET", f"/api/v1/jobs/{job_id}")
        if job["status"] in FINAL:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def upload_point(
    agent: Agent, age: dt.timedelta, item_id: str, job_id: str | None = None
) -> tuple[str, bytes]:
    """A point of ``age`` with its own pack; returns (point id, pack id)."""
    point_id, pid, _ = upload_point_blobs(agent, age, item_id, job_id)
    return point_id, pid


def upload_point_blobs(
    agent: Agent, age: dt.timedelta, item_id: str, job_id: str | None = None
) -> tuple[str, bytes, list[bytes]]:
    """A point of ``age`` with its own pack; returns (point id, pack id, blob ids)."""
    pid, pack, entries = make_pack(count=2, size=4000)
    iname, index = make_index(entries)
    point_id = secrets.token_hex(16)
    header = {"id": point_id, "time": (dt.datetime.now(dt.UTC) - age).isoformat(), "kind": "files", "refs": 2}
    params = {"item": item_id, **({"job": job_id} if job_id else {})}
    for name, data, extra in (
        (pack_name(pid), pack, {}),
        (iname, index, {}),
        (refs_name(point_id), encode_refs(e.id for e in entries), {}),
        (point_name(point_id), encode_point(header, b"sealed"), params),
    ):
        response = agent.put(name, data, **extra)
        assert response.status_code == 200, (name, response.text)
    return point_id, pid, [e.id for e in entries]


def exists(agent: Agent, name: str) -> bool:
    """Whether the repository holds an object."""
    response = agent.call("HEAD", f"/api/v1/machines/{agent.machine_id}/repo/objects/{name}")
    return response.status_code == 200


def test_retention_expires_points_and_gc_frees_their_data(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    item_id = vault.item(agent.machine_id, vault.policy(retention={"daily": 30})["id"])["id"]
    old, old_pack, old_blobs = upload_point_blobs(agent, dt.timedelta(days=40), item_id)
    older, older_pack = upload_point(agent, dt.timedelta(days=35), item_id)
    recent, recent_pack, recent_blobs = upload_point_blobs(agent, dt.timedelta(days=1), item_id)
    # An on-demand point is kept until its retain-until date, whatever the policy says.
    job = vault.ok(
        "POST",
        f"/api/v1/items/{item_id}/backup",
        json={"retain_until": (dt.datetime.now(dt.UTC) + dt.timedelta(days=60)).isoformat()},
    )
    agent.work(wait=5)
    on_demand, on_demand_pack = upload_point(agent, dt.timedelta(days=45), item_id, job["id"])
    agent.result(job["id"], "Completed")

    retention = wait_job(vault, vault.ok("POST", "/api/v1/maintenance/retention")["id"])
    assert retention["status"] == "Completed", retention
    assert retention["result"]["stats"]["points_expired"] == 2
    states = {
        p["id"]: p["state"]
        for p in vault.ok("GET", "/api/v1/points", params={"state": "", "item_id": item_id})
    }
    assert states == {old: "Expired", older: "Expired", recent: "Available", on_demand: "Available"}
    assert not exists(agent, point_name(old)) and exists(agent, point_name(recent))

    gc_jobs = vault.ok(
        "GET", "/api/v1/jobs", params={"type": "GarbageCollect", "machine_id": agent.machine_id}
    )
    assert len(gc_jobs) == 1  # queued by retention for the machine it touched
    gc = wait_job(vault, gc_jobs[0]["id"])
    assert gc["status"] == "Completed", gc
    assert gc["result"]["stats"]["packs_deleted"] == 2 and gc["result"]["stats"]["bytes_freed"] > 0
    assert not exists(agent, pack_name(old_pack)) and not exists(agent, pack_name(older_pack))
    assert not exists(agent, refs_name(old))
    assert exists(agent, pack_name(recent_pack)) and exists(agent, pack_name(on_demand_pack))
    # The database agrees with the repository: the dropped blobs are gone, the kept ones there.
    store = agent.store()
    try:
        assert store.have(old_blobs + recent_blobs) == set(recent_blobs)
        assert len(list(store.list("index/"))) == 1  # GC leaves one index covering everything
    finally:
        store.close()
    # The index files it replaced are recorded as deleted, the new one as live.
    with vault.db.read() as s:
        rows = s.scalars(select(IndexFile).where(IndexFile.machine_id == agent.machine_id)).all()
    assert sorted(r.deleted_at is None for r in rows) == [False] * 4 + [True]


def test_soft_deleted_items_are_purged_after_14_days(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    item_id = vault.item(agent.machine_id, vault.policy()["id"])["id"]
    point_id, pack_id = upload_point(agent, dt.timedelta(days=1), item_id)
    vault.ok("POST", f"/api/v1/items/{item_id}/stop", json={"delete_data": True})
    wait_job(vault, vault.ok("POST", "/api/v1/maintenance/retention")["id"])
    assert vault.ok("GET", f"/api/v1/points/{point_id}")["state"] == "Available"  # 14 days not over
    with vault.db.write() as s:
        s.execute(
            update(ProtectedItem)
            .where(ProtectedItem.id == item_id)
            .values(purge_after=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
        )
    result = wait_job(vault, vault.ok("POST", "/api/v1/maintenance/retention")["id"])
    assert result["result"]["stats"]["items_purged"] == 1
    assert vault.request("GET", f"/api/v1/items/{item_id}").status_code == 404
    assert vault.ok("GET", f"/api/v1/points/{point_id}")["state"] == "Expired"
    for gc in vault.ok(
        "GET", "/api/v1/jobs", params={"type": "GarbageCollect", "machine_id": agent.machine_id}
    ):
        wait_job(vault, gc["id"])
    assert not exists(agent, pack_name(pack_id))
    # With its data gone the machine can be removed.
    assert vault.request("DELETE", f"/api/v1/machines/{agent.machine_id}").status_code == 204


def test_gc_waits_for_a_running_backup(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    item_id = vault.item(agent.machine_id, vault.policy()["id"])["id"]
    backup = vault.ok("POST", f"/api/v1/items/{item_id}/backup", json={})
    agent.work(wait=5)  # the backup has started on the agent
    gc = vault.ok("POST", "/api/v1/maintenance/gc", json={"machine_id": agent.machine_id})[0]
    deadline = time.monotonic() + 10
    while vault.ok("GET", f"/api/v1/jobs/{gc['id']}")["phase"] != "Waiting for backups to finish":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    assert vault.ok("GET", f"/api/v1/jobs/{gc['id']}")["status"] == "InProgress"
    agent.backup(item_id, backup["id"])
    agent.result(backup["id"], "Completed")
    assert wait_job(vault, gc["id"], timeout=30)["status"] == "Completed"


def test_a_sweep_blocks_backups_and_new_points(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    item_id = vault.item(agent.machine_id, vault.policy()["id"])["id"]
    with vault.db.write() as s:
        s.execute(
            update(GcState)
            .where(GcState.machine_id == agent.machine_id)
            .values(
                sweeping=True,
                holder="another-process",
                lease_until=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
            )
        )
    job = vault.ok("POST", f"/api/v1/items/{item_id}/backup", json={})
    assert agent.work(wait=0)["jobs"] == []  # the backup does not start while the sweep runs
    pid, pack, entries = make_pack()
    assert agent.put(pack_name(pid), pack).status_code == 200  # packs may come (they are young)
    iname, index = make_index(entries)
    blocked = agent.put(iname, index)
    assert blocked.status_code == 409 and blocked.json()["code"] == "RepoMaintenanceInProgress"
    with vault.db.write() as s:
        s.execute(
            update(GcState)
            .where(GcState.machine_id == agent.machine_id)
            .values(lease_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )  # the sweeper died
    assert [j["id"] for j in agent.work(wait=0)["jobs"]] == [job["id"]]
    assert agent.put(iname, index).status_code == 200
