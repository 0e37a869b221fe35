"""Two agent daemons and a vault, as real processes, driven through the vault's API.

Agent A backs up and restores a folder; agent B (slowed by its bandwidth limit, with
small packs, and its scratch folder on a small loop file system when the kernel allows
one) is the one whose jobs are cancelled, cut off by a vault outage, killed mid-way and
starved of scratch space. Tests run in file order and share the processes.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.agent.helpers import (
    PASSPHRASE,
    AgentProc,
    VaultServer,
    fill,
    loop_filesystem,
    make_tree,
    wait_for,
)

B_LIMIT = 4_000_000  # bytes per second, work hours and off hours alike
B_PACK = 256 * 1024


@dataclass
class Fleet:
    """The module's vault, agents, policy and items."""

    vault: VaultServer
    a: AgentProc
    b: AgentProc
    a_id: str
    b_id: str
    policy: str
    data: Path
    docs: dict[str, Any]
    b_scratch_fs: Path | None
    items: dict[str, dict[str, Any]]


def _stored_pack_bytes(vault: VaultServer, machine_id: str) -> int:
    root = vault.data / "store" / "machines" / machine_id / "data"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def fleet(vault: VaultServer, workdir: Path) -> Iterator[Fleet]:
    creds = vault.credentials_file(workdir / "creds")
    fs_cm = None
    b_scratch_fs: Path | None = None
    try:
        fs_cm = loop_filesystem(workdir / "bfs", size_mib=64)
        b_scratch_fs = fs_cm.__enter__()
    except (subprocess.CalledProcessError, FileNotFoundError, OSError):
        fs_cm = None
    a = AgentProc(root=workdir / "agent-a", hostname="host-a", scratch=workdir / "agent-a" / "scratch")
    b = AgentProc(
        root=workdir / "agent-b",
        hostname="host-b",
        scratch=(b_scratch_fs / "scratch") if b_scratch_fs else workdir / "agent-b" / "scratch",
        extra_env={"KLUIS_PACK_SIZE": str(B_PACK)},
    )
    try:
        for agent in (a, b):
            result = agent.register(creds)
            assert result.rc == 0, result.stdout + result.stderr
            agent.tune(heartbeat_interval=1, poll_wait=5)
        b.tune(work_hours_limit=B_LIMIT, off_hours_limit=B_LIMIT)
        a.start()
        b.start()
        policy = vault.ok(
            "POST",
            "/api/v1/policies",
            json={
                "name": "nightly",
                "schedule": {"kind": "daily", "timezone": "UTC", "times": ["03:00"]},
                "retention": {"daily": 30},
            },
        )
        data = workdir / "data-a"
        make_tree(data, files=100, size=64 * 1024, seed=7)
        docs = vault.files_item(a.machine_id(), policy["id"], [str(data)], "docs")
        yield Fleet(vault, a, b, a.machine_id(), b.machine_id(), policy["id"], data, docs, b_scratch_fs, {})
    finally:
        a.stop()
        b.stop()
        if fs_cm is not None:
            fs_cm.__exit__(None, None, None)


def _point_of(job: dict[str, Any]) -> str:
    return str(job["result"]["point_id"])


def test_backup_reports_progress_and_result(fleet: Fleet) -> None:
    vault = fleet.vault
    job = vault.backup(fleet.docs["id"])
    done = vault.wait_job(job["id"])
    assert done["status"] == "Completed", done
    assert done["phase"] == "Transfer data to vault"
    progress = done["progress"]
    assert progress["files_done"] == 100 and progress["bytes_done"] == sum(
        p.stat().st_size for p in fleet.data.rglob("*") if p.is_file()
    )
    assert "files" in progress["message"] and "/s" in progress["message"]
    assert progress["rate"] > 0
    stats = done["result"]["stats"]
    assert stats["files_read"] == 100 and stats["warnings"] == 0 and stats["point_id"] == _point_of(done)
    point = vault.ok("GET", f"/api/v1/points/{_point_of(done)}")
    assert point["item_id"] == fleet.docs["id"] and point["job_id"] == job["id"]

    # The machine is online with its version, and `kluis agent status` shows the same vault.
    machine = vault.ok("GET", f"/api/v1/machines/{fleet.a_id}")
    assert machine["status"] == "Online" and machine["hostname"] == "host-a"
    status = fleet.a.cli("status", "--json").json
    assert status["daemon_running"] is True and status["vault_id"] == vault.vault_id
    assert status["last_heartbeat_at"] and status["machine_name"] == "host-a"
    assert status["recent_jobs"][0]["id"] == job["id"]


def test_heartbeat_carries_extension_handler_states(fleet: Fleet, workdir: Path) -> None:
    from kluis.agent.extensions.snapshot import (
        EXTENSION_NAME,
        ExtensionManager,
        build_snapshot_extension_package,
    )

    package, sha256, version = build_snapshot_extension_package(workdir / "pkg")
    manager = ExtensionManager(fleet.a.scratch / "extensions", machine="host-a")
    manager.ensure(EXTENSION_NAME, version, sha256, package.read_bytes)

    def reported() -> list[dict[str, Any]]:
        machine = fleet.vault.ok("GET", f"/api/v1/machines/{fleet.a_id}")
        return [e for e in machine["extensions"] if e["name"] == EXTENSION_NAME]

    # A heartbeat sent while the install ran says "transitioning"; the next one says how it ended.
    found = wait_for(
        lambda: [e for e in reported() if e["state"] != "transitioning"], what="the extension in a heartbeat"
    )
    assert found[0]["version"] == version and found[0]["state"] == "succeeded"
    status = fleet.a.cli("status", "--json").json
    assert [e["name"] for e in status["extensions"]] == [EXTENSION_NAME]
    manager.uninstall(EXTENSION_NAME)
    wait_for(lambda: not reported(), what="the uninstalled extension to disappear")


def test_reregistration_while_the_daemon_runs(fleet: Fleet, workdir: Path) -> None:
    # A new token replaces the old one; the running daemon picks it up from agent.toml.
    again = fleet.a.register(fleet.vault.credentials_file(workdir / "creds2"))
    assert again.rc == 0 and again.json["reregistered"] is True, again.stdout
    done = fleet.vault.wait_job(fleet.vault.backup(fleet.docs["id"])["id"])
    assert done["status"] == "Completed", done
    # Registering again kept the settings made after the first registration.
    agent = tomllib.loads(fleet.a.config_file.read_text())["agent"]
    assert agent["heartbeat_interval"] == 1 and agent["poll_wait"] == 5
    since = time.time()
    wait_for(
        lambda: (fleet.a.state().get("last_heartbeat_at") or 0) > since, what="a heartbeat with the new token"
    )
    assert fleet.a.state()["last_heartbeat_error"] is None


def test_incremental_after_one_percent_change(fleet: Fleet) -> None:
    target = sorted(fleet.data.rglob("*.bin"))[5]
    with open(target, "r+b") as f:
        f.seek(1000)
        f.write(os.urandom(4096))
    done = fleet.vault.wait_job(fleet.vault.backup(fleet.docs["id"])["id"])
    assert done["status"] == "Completed", done
    stats = done["result"]["stats"]
    assert stats["files_read"] == 1  # the other 99 came from the checksum store unread
    total = stats["bytes"]
    assert stats["new_bytes"] <= target.stat().st_size < total // 50
    assert stats["stored_bytes"] < total // 20


def _snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    out: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        content: Any = (
            os.readlink(path) if path.is_symlink() else (path.read_bytes() if path.is_file() else None)
        )
        xattrs = {}
        if not path.is_symlink():
            xattrs = {n: os.getxattr(path, n) for n in os.listxattr(path)}
        out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, content, xattrs)
    return out


def test_restore_is_byte_identical_with_metadata(fleet: Fleet, workdir: Path) -> None:
    data = fleet.data
    os.symlink("d0/sub0/file000.bin", data / "link")
    (data / "secret.txt").write_text("only root reads this\n")
    os.chmod(data / "secret.txt", 0o600)
    os.chown(data / "secret.txt", 1234, 4321)
    os.setxattr(data / "d1", "user.kluis.note", b"kept")
    os.utime(data / "d2", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    vault = fleet.vault
    point = _point_of(vault.wait_job(vault.backup(fleet.docs["id"])["id"]))
    expected = _snapshot(data)

    target = workdir / "restore-a"
    job = vault.ok(
        "POST",
        f"/api/v1/items/{fleet.docs['id']}/restore",
        json={"point_id": point, "target_path": str(target)},
    )
    done = vault.wait_job(job["id"])
    assert done["status"] == "Completed", done
    assert done["phase"] == "Transfer data from vault"
    assert _snapshot(target / str(data).lstrip("/")) == expected

    # To the original location (the default), overwriting a changed file.
    victim = data / "d3" / "sub0" / "file003.bin"
    original = victim.read_bytes()
    victim.write_bytes(b"ransomware was here")
    job = vault.ok(
        "POST",
        f"/api/v1/items/{fleet.docs['id']}/restore",
        json={"point_id": point, "paths": [str(victim)], "overwrite": True},
    )
    done = vault.wait_job(job["id"])
    assert done["status"] == "Completed", done
    assert done["result"]["stats"]["files"] == 1
    assert victim.read_bytes() == original


def test_restore_on_second_machine_with_first_machines_passphrase(fleet: Fleet, workdir: Path) -> None:
    vault = fleet.vault
    points = vault.ok("GET", "/api/v1/points", params={"item_id": fleet.docs["id"]})
    point = points[0]["id"]
    target = workdir / "restore-on-b"
    body = {"point_id": point, "target_path": str(target), "target_machine_id": fleet.b_id}

    # Without the source's passphrase, B cannot read A's data.
    done = vault.wait_job(vault.ok("POST", f"/api/v1/items/{fleet.docs['id']}/restore", json=body)["id"])
    assert done["status"] == "Failed" and done["error"]["code"] == "RestoreSourcePassphraseMissing", done
    assert fleet.a_id in done["error"]["message"]

    pfile = workdir / "a-passphrase"
    pfile.write_text(PASSPHRASE + "\n")
    given = fleet.b.cli("source-passphrase", fleet.a_id, "--passphrase-file", str(pfile), "--json")
    assert given.rc == 0, given.stdout + given.stderr
    done = vault.wait_job(vault.ok("POST", f"/api/v1/items/{fleet.docs['id']}/restore", json=body)["id"])
    assert done["status"] == "Completed", done
    assert done["machine_id"] == fleet.b_id
    assert _snapshot(target / str(fleet.data).lstrip("/")) == _snapshot(fleet.data)
    # The passphrase file is gone; only the derived key is kept (0600) for later restores.
    sources = fleet.b.scratch / "sources"
    assert not (sources / f"{fleet.a_id}.passphrase").exists()
    assert (sources / f"{fleet.a_id}.kek").stat().st_mode & 0o777 == 0o600


def test_cancel_an_inflight_backup(fleet: Fleet, workdir: Path) -> None:
    vault = fleet.vault
    bulk = workdir / "data-b"
    make_tree(bulk, files=16, size=700 * 1024, seed=11)
    item = vault.files_item(fleet.b_id, fleet.policy, [str(bulk)], "bulk")
    job = vault.backup(item["id"])
    wait_for(lambda: (vault.job(job["id"])["progress"].get("bytes_done") or 0) > 1_000_000, what="progress")
    asked = time.monotonic()
    cancelling = vault.ok("POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert cancelling["status"] == "Cancelling"
    done = vault.wait_job(job["id"], timeout=20)
    assert done["status"] == "Cancelled", done
    assert time.monotonic() - asked < 8
    assert done["progress"]["bytes_done"] < sum(p.stat().st_size for p in bulk.rglob("*") if p.is_file())
    assert not vault.ok("GET", "/api/v1/points", params={"item_id": item["id"]})
    # The item is free again: the next backup runs (and reuses what the cancelled one sent).
    fleet.items["bulk"] = item


def test_vault_outage_is_ridden_out(fleet: Fleet) -> None:
    vault = fleet.vault
    item = fleet.items["bulk"]
    job = vault.backup(item["id"])
    wait_for(lambda: (vault.job(job["id"])["progress"].get("bytes_done") or 0) > 0, what="transfer")
    vault.kill()
    time.sleep(2.5)
    vault.start()
    done = vault.wait_job(job["id"], timeout=90)
    assert done["status"] == "Completed", (done.get("error"), done.get("warnings"), done.get("progress"))
    stats = done["result"]["stats"]
    assert stats["network_retries"] >= 1
    # Bandwidth: the limit holds (the stored bytes took at least their share of seconds).
    assert stats["stored_bytes"] / max(stats["seconds"], 0.001) <= B_LIMIT * 1.3


def test_agent_killed_mid_backup_resumes_without_resending(fleet: Fleet, workdir: Path) -> None:
    vault = fleet.vault
    fresh = workdir / "data-b2"
    make_tree(fresh, files=16, size=700 * 1024, seed=23)
    item = vault.files_item(fleet.b_id, fleet.policy, [str(fresh)], "crashy")
    size = sum(p.stat().st_size for p in fresh.rglob("*") if p.is_file())
    before = _stored_pack_bytes(vault, fleet.b_id)
    job = vault.backup(item["id"])
    # Killed early, before the engine writes its first index file (every 16 packs): what was
    # sent is in packs no index names, which only the pack journal knows about.
    wait_for(lambda: (vault.job(job["id"])["progress"].get("bytes_done") or 0) > size // 5, what="a fifth")
    fleet.b.kill()
    sent = _stored_pack_bytes(vault, fleet.b_id) - before
    assert sent > size // 8
    fleet.b.start()
    # The restarted agent reports the job it lost, instead of leaving it hanging.
    lost = vault.wait_job(job["id"], timeout=20)
    assert lost["status"] == "Failed" and lost["error"]["code"] == "AgentRestartedDuringJob", lost
    done = vault.wait_job(vault.backup(item["id"])["id"], timeout=60)
    assert done["status"] == "Completed", done
    assert done["result"]["stats"]["adopted_blobs"] >= 1
    added = _stored_pack_bytes(vault, fleet.b_id) - before
    assert added < size * 1.1, (added, size, sent)  # what was sent before the crash is not sent again


def test_two_backup_triggers_at_once(fleet: Fleet) -> None:
    vault = fleet.vault
    answers: list[Any] = []

    def trigger() -> None:
        answers.append(vault.request("POST", f"/api/v1/items/{fleet.docs['id']}/backup", json={}))

    threads = [threading.Thread(target=trigger) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in answers)
    assert codes == [202, 409], [r.text for r in answers]
    refused = next(r for r in answers if r.status_code == 409).json()
    assert refused["code"] == "UserErrorBackupOperationInProgress"
    started = next(r for r in answers if r.status_code == 202).json()
    assert refused["params"]["job"] == started["id"]
    assert vault.wait_job(started["id"])["status"] == "Completed"


def test_agent_refuses_a_second_job_for_a_busy_item(fleet: Fleet) -> None:
    # The vault never hands out two backups of one item; the agent checks again anyway. A
    # daemon object (not a second process) receives the real job twice under two ids.
    from kluis.agent.config import AgentConfig
    from kluis.agent.daemon import Daemon

    vault = fleet.vault
    fleet.a.stop()
    try:
        job = vault.backup(fleet.docs["id"])
        daemon = Daemon(AgentConfig.load(fleet.a.config_dir), hostname="host-a")
        work = daemon.client.work(fleet.a_id, 5)
        assert [j["id"] for j in work["jobs"]] == [job["id"]]
        daemon.handle_work(work)
        daemon.start_job({**work["jobs"][0], "id": "f" * 32})
        daemon.start_job(work["jobs"][0])  # the same job again: ignored, it runs once
        refused = wait_for(
            lambda: next((r for r in daemon.state.data.get("recent", []) if r["id"] == "f" * 32), None),
            what="the refused duplicate",
        )
        assert refused["status"] == "Failed"
        assert refused["error"]["code"] == "UserErrorBackupOperationInProgress"
        assert refused["error"]["params"]["job"] == job["id"]
        assert vault.wait_job(job["id"])["status"] == "Completed"
        daemon.client.close()
    finally:
        fleet.a.start()


def test_hostname_changed_since_registration(fleet: Fleet) -> None:
    vault = fleet.vault
    fleet.a.stop()
    fleet.a.start(hostname="host-a-renamed")
    try:
        state = wait_for(lambda: fleet.a.state().get("last_heartbeat_error"), what="heartbeat error")
        assert state["code"] == "230006"
        status = fleet.a.cli("status", "--json", hostname="host-a-renamed").json
        assert status["current_hostname"] == "host-a-renamed" and status["machine_name"] == "host-a"
        done = vault.wait_job(vault.backup(fleet.docs["id"])["id"])
        assert done["status"] == "Failed" and done["error"]["code"] == "230006", done
        assert "host-a-renamed" in done["error"]["message"] and "host-a" in done["error"]["message"]
    finally:
        fleet.a.stop()
        fleet.a.start()


def test_kek_file_deleted(fleet: Fleet, workdir: Path) -> None:
    vault = fleet.vault
    kek = fleet.a.scratch / "kluis.kek"
    kek.unlink()
    done = vault.wait_job(vault.backup(fleet.docs["id"])["id"])
    assert done["status"] == "Failed" and done["error"]["code"] == "34506", done
    assert str(kek) in done["error"]["message"]
    # The agent's specifics travel with the job record, not only inside its own message.
    assert done["error"]["detail"] == "the KEK file is missing", done["error"]
    # The fix the catalog gives: recreate it from the passphrase.
    pfile = workdir / "a-pass-2"
    pfile.write_text(PASSPHRASE)
    unlocked = fleet.a.cli("unlock", "--passphrase-file", str(pfile), "--json")
    assert unlocked.rc == 0, unlocked.stdout + unlocked.stderr
    assert kek.stat().st_mode & 0o777 == 0o600
    assert vault.wait_job(vault.backup(fleet.docs["id"])["id"])["status"] == "Completed"

    # Another machine's KEK file in its place: also 34506, saying whose key set it is.
    saved = kek.read_bytes()
    kek.write_bytes((fleet.b.scratch / "kluis.kek").read_bytes())
    try:
        done = vault.wait_job(vault.backup(fleet.docs["id"])["id"])
        assert done["status"] == "Failed" and done["error"]["code"] == "34506", done
        assert str(kek) in done["error"]["message"]
    finally:
        kek.write_bytes(saved)


def test_damaged_checksum_store(fleet: Fleet) -> None:
    vault = fleet.vault
    db = fleet.a.scratch / "items" / fleet.docs["id"] / "checksums.db"
    for extra in (db.with_name("checksums.db-wal"), db.with_name("checksums.db-shm")):
        extra.unlink(missing_ok=True)
    db.write_bytes(b"not a database any more " * 400)
    done = vault.wait_job(vault.backup(fleet.docs["id"])["id"])
    assert done["status"] == "Failed" and done["error"]["code"] == "SalChecksumStoreInitializationFailed", (
        done
    )
    assert str(db) in done["error"]["message"]
    # The catalog's fix: delete it; the next backup reads every file once and rebuilds it.
    db.unlink()
    done = vault.wait_job(vault.backup(fleet.docs["id"])["id"])
    assert done["status"] == "Completed", done
    assert done["result"]["stats"]["files_read"] == done["result"]["stats"]["files"] - 1  # all but the link


def test_completed_with_warnings_lists_skipped_files(fleet: Fleet, workdir: Path) -> None:
    pytest.importorskip("pyfuse3", reason="pyfuse3 is installed by `make test` (extra 'mount')")
    from tests.support.faultyfs import mounted

    mnt = workdir / "faulty"
    mnt.mkdir()
    with mounted(mnt):
        vault = fleet.vault
        item = vault.files_item(fleet.a_id, fleet.policy, [str(mnt)], "faulty")
        done = vault.wait_job(vault.backup(item["id"])["id"])
        assert done["status"] == "CompletedWithWarnings", done
        stats = done["result"]["stats"]
        assert stats["skipped_files"] == 5
        log = Path(stats["failed_files_log"])
        assert log.is_file() and log.parent.parent == fleet.a.scratch
        summary, *files = done["warnings"]
        assert summary["code"] == "BackupCompletedWithWarnings" and str(log) in summary["message"]
        expected = ["0x80070002", "0x80070005", "0x80070570", "0x80070570", "0x8007018b"]
        assert sorted(w["code"] for w in files) == sorted(expected)
        assert all(str(mnt) in w["message"] for w in files)


def test_scratch_folder_full_before_a_job(fleet: Fleet) -> None:
    if fleet.b_scratch_fs is None:
        pytest.skip("no loop device for a small scratch file system on this machine")
    vault = fleet.vault
    filler = fill(fleet.b_scratch_fs)
    try:
        done = vault.wait_job(vault.backup(fleet.items["bulk"]["id"])["id"])
        assert done["status"] == "Failed" and done["error"]["code"] == "SalLowDiskSpace", done
        message = done["error"]["message"]
        assert str(fleet.b.scratch) in message and "16.0 MiB" in message
    finally:
        filler.unlink()
        (fleet.b_scratch_fs / "filler-small").unlink(missing_ok=True)
    assert vault.wait_job(vault.backup(fleet.items["bulk"]["id"])["id"])["status"] == "Completed"
