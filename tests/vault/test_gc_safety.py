"""GC safety: backups racing garbage collection never lose data their points reference.

Backups and GC run concurrently for many rounds in one vault context (the vault's own
code paths: job start and claim, the repository API's checked writes, ``run_gc``) on
each database backend. Backups deduplicate against blobs the vault says it holds, some
of which GC would like to delete; retention expires old points meanwhile. At the end
every live point's every blob must be readable, byte for byte, where the database says.
"""

from __future__ import annotations

import random
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from kluis.catalog import KluisError
from kluis.engine.format import (
    decode_refs,
    encode_point,
    encode_refs,
    object_id,
    pack_name,
    point_name,
    refs_name,
)
from kluis.vault import agent_jobs, jobs, machines, maintenance, policies
from kluis.vault import items as items_service
from kluis.vault.app import open_context
from kluis.vault.auth import Principal, Role
from kluis.vault.config import new_config
from kluis.vault.context import VaultContext
from kluis.vault.db.models import Blob, GcState, Job, ProtectedItem, RecoveryPoint
from kluis.vault.db.types import utcnow
from kluis.vault.repo import RepoService, Upload
from tests.vault.helpers import make_index, make_pack

ROUNDS = 30


@pytest.fixture
def ctx(new_db_url: Callable[[], str], tmp_path: Path) -> Iterator[VaultContext]:
    """A vault context whose GC has no grace period (the hardest case)."""
    cfg = new_config(tmp_path, "gc-race")
    cfg.db_url = new_db_url()
    cfg.gc_grace_hours = 0.0
    cfg.gc_repack_threshold = 0.9  # repack eagerly: more copying, more chances to lose something
    context = open_context(cfg)
    yield context
    context.close()


def _put(service: RepoService, machine_id: str, name: str, data: bytes, **kw: str | None) -> None:
    service.put(
        machine_id, Upload(name, data, object_id(data).hex()), item_id=kw.get("item"), job_id=kw.get("job")
    )


def test_backups_racing_gc_never_lose_referenced_data(ctx: VaultContext) -> None:
    admin = Principal("user", "admin", role=Role.ADMIN, user_id="x")
    reg = machines.Registration(
        hostname="racer", os="Linux", agent_version="0.1.0", key_fingerprint="cd" * 16
    )
    with ctx.db.write() as s:
        machine_id = machines.register(s, ctx.config, reg, admin)["machine_id"]
        policy = policies.create(
            s, "p", {"kind": "daily", "timezone": "UTC", "times": ["01:00"]}, {"daily": 7}
        )
        item, _ = items_service.enable(
            s,
            machine_id=machine_id,
            name="data",
            kind="files",
            spec={"paths": ["/"]},
            policy_ref=policy.id,
            created_by="t",
        )
        item_id = item.id
    service = RepoService(ctx)
    contents: dict[bytes, bytes] = {}  # every blob ever uploaded, to check bytes at the end
    points: list[str] = []
    failures: list[str] = []
    done = threading.Event()
    gc_runs = {"ran": 0, "blocked": 0}

    def backups() -> None:
        rng = random.Random(7)
        try:
            for _ in range(ROUNDS):
                with ctx.db.write() as s:
                    row = s.get(ProtectedItem, item_id)
                    assert row is not None
                    job_id = jobs.start_backup(s, row, trigger="OnDemand", created_by="t").id
                while True:  # the agent's claim, under the same rule as the API
                    with ctx.db.write() as s:
                        gc = s.scalar(
                            select(GcState).where(GcState.machine_id == machine_id).with_for_update()
                        )
                        now = utcnow()
                        sweeping = bool(gc and gc.sweeping and gc.lease_until and gc.lease_until > now)
                        handed = agent_jobs.claim(s, machine_id, now, sweeping)["jobs"]
                        if any(j["id"] == job_id for j in handed):
                            break
                    time.sleep(0.005)
                # Deduplicate against what the vault says it holds, as the agent does.
                known = rng.sample(sorted(contents), min(len(contents), 6))
                held = {bytes.fromhex(h) for h in service.have(machine_id, [k.hex() for k in known])}
                pid, pack, entries = make_pack(count=3, size=500)
                blobs = [e.id for e in entries]
                body = pack[: sum(e.length for e in entries)]
                for e in entries:
                    contents[e.id] = body[e.offset : e.offset + e.length]
                _put(service, machine_id, pack_name(pid), pack)
                iname, index = make_index(entries)
                _put(service, machine_id, iname, index)
                refs = blobs + sorted(held)
                point_id = secrets.token_hex(16)
                header = {"id": point_id, "time": utcnow().isoformat(), "kind": "files", "refs": len(refs)}
                _put(service, machine_id, refs_name(point_id), encode_refs(refs))
                _put(
                    service,
                    machine_id,
                    point_name(point_id),
                    encode_point(header, b"x"),
                    item=item_id,
                    job=job_id,
                )
                with ctx.db.write() as s:
                    agent_jobs.report_result(
                        s, machine_id, job_id, status="Completed", error=None, warnings=[], stats={}
                    )
                points.append(point_id)
                if len(points) > 4 and rng.random() < 0.5:  # retention expires an old point meanwhile
                    maintenance.expire_point(ctx, points.pop(rng.randrange(len(points) - 2)))
        except KluisError as exc:
            failures.append(f"backup: {exc.code}: {exc.message}")
        finally:
            done.set()

    def collector() -> None:
        while not done.is_set():
            with ctx.db.write() as s:
                job = maintenance.queue_gc(s, machine_id, created_by="t")[0]
                s.expunge(job)
            try:
                maintenance.run_gc(ctx, job)
                gc_runs["ran"] += 1
            except maintenance.GcBlocked:
                gc_runs["blocked"] += 1
            except KluisError as exc:
                failures.append(f"gc: {exc.code}: {exc.message}")
            with ctx.db.write() as s:
                row = s.get(Job, job.id)
                if row is not None:
                    row.status = "Completed"

    threads = [threading.Thread(target=backups), threading.Thread(target=collector)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not failures, failures
    maintenance.run_gc(ctx, maintenance_job(ctx, machine_id))  # one more, with nothing running
    assert gc_runs["ran"] > 3, gc_runs  # GC really ran between the backups

    prefix = ctx.repo_prefix(machine_id)
    with ctx.db.read() as s:
        live = s.scalars(
            select(RecoveryPoint.id).where(
                RecoveryPoint.machine_id == machine_id, RecoveryPoint.state == "Available"
            )
        ).all()
        assert sorted(live) == sorted(points)
        for point_id in live:
            refs = decode_refs(point_id, ctx.store.get(prefix + refs_name(point_id)))
            for blob in refs:
                row = s.scalar(
                    select(Blob).where(Blob.machine_id == machine_id, Blob.blob_id == blob).limit(1)
                )
                assert row is not None, f"point {point_id} lost blob {blob.hex()}"
                data = ctx.store.get(prefix + pack_name(row.pack_id), row.offset, row.length)
                assert data == contents[blob], f"blob {blob.hex()} of point {point_id} damaged"


def maintenance_job(ctx: VaultContext, machine_id: str) -> Job:
    """A GarbageCollect job row, detached, for calling run_gc directly."""
    with ctx.db.write() as s:
        job = maintenance.queue_gc(s, machine_id, created_by="t")[0]
        s.expunge(job)
    return job


def _machine_with_two_packs(ctx: VaultContext, host: str) -> tuple[str, RepoService, list[str], list[str]]:
    """A machine whose repository holds two packs (not referenced by any point)."""
    admin = Principal("user", "admin", role=Role.ADMIN, user_id="x")
    reg = machines.Registration(hostname=host, os="Linux", agent_version="0.1.0", key_fingerprint="ef" * 16)
    with ctx.db.write() as s:
        machine_id = machines.register(s, ctx.config, reg, admin)["machine_id"]
    service = RepoService(ctx)
    first_id, first, first_entries = make_pack()
    second_id, second, second_entries = make_pack()
    _put(service, machine_id, pack_name(first_id), first)
    _put(service, machine_id, pack_name(second_id), second)
    name, index = make_index(first_entries + second_entries)
    _put(service, machine_id, name, index)
    return (
        machine_id,
        service,
        [e.id.hex() for e in first_entries],
        [e.id.hex() for e in second_entries],
    )


def test_packs_lost_by_a_sweep_cut_short_are_reconciled(ctx: VaultContext) -> None:
    """GC deleted a pack from the store and died before telling the database."""
    machine_id, service, kept, lost = _machine_with_two_packs(ctx, "cut")
    assert sorted(service.have(machine_id, kept + lost)) == sorted(kept + lost)
    lost_pack = ctx.repo_prefix(machine_id) + pack_name(bytes.fromhex(_pack_of(ctx, machine_id, lost[0])))
    ctx.store.delete(lost_pack)
    believed = service.have(machine_id, kept + lost)
    assert sorted(believed) == sorted(kept + lost), "the database still believes it"
    assert maintenance.reconcile_packs(ctx, machine_id) == 1
    assert sorted(service.have(machine_id, kept + lost)) == sorted(kept), "lost blobs must be uploaded again"
    assert maintenance.reconcile_packs(ctx, machine_id) == 0


def test_a_sweep_that_fails_after_deleting_packs_leaves_the_database_true(ctx: VaultContext) -> None:
    """The sweep deletes dead packs, then cannot delete a refs list: the job fails, the rows follow."""
    machine_id, service, first, second = _machine_with_two_packs(ctx, "half")
    prefix = ctx.repo_prefix(machine_id)
    # A reference list whose point is gone: the sweep's last step deletes it, and cannot.
    orphan = prefix + refs_name(secrets.token_hex(16))
    ctx.store.put(orphan, encode_refs([]))
    refs_dir = Path(str(ctx.store.url).removeprefix("file://")) / orphan.rsplit("/", 1)[0]
    subprocess.run(["chattr", "+i", str(refs_dir)], check=True)
    try:
        with pytest.raises(KluisError):
            maintenance.run_gc(ctx, maintenance_job(ctx, machine_id))  # grace 0: both packs are dead
    finally:
        subprocess.run(["chattr", "-i", str(refs_dir)], check=True)
    assert not list(ctx.store.list(prefix + "data/")), "the sweep did delete the packs"
    assert service.have(machine_id, first + second) == [], "and the database knows"
    with ctx.db.read() as s:
        state = s.get(GcState, machine_id)
        assert state is not None and not state.sweeping


def _pack_of(ctx: VaultContext, machine_id: str, blob_hex: str) -> str:
    with ctx.db.read() as s:
        row = s.scalar(
            select(Blob).where(Blob.machine_id == machine_id, Blob.blob_id == bytes.fromhex(blob_hex))
        )
        assert row is not None
        return row.pack_id.hex()
