"""``kluis doctor --vault`` on the vault server: healthy, then each condition made for real.

One vault process (``kluis vault serve``) with fast heartbeat rules, so a silent
agent is unresponsive after a second. Machines speak the vault's HTTP API as agents
do (``tests.vault.helpers.Agent``). The lease tests stop the server last.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import tomli_w

from kluis.vault.config import CONFIG_NAME, VaultConfig
from kluis.vault.db.models import ProtectedItem
from tests.agent.helpers import VaultServer, wait_for
from tests.doctor.helpers import run_vault_doctor
from tests.vault.helpers import Agent


@pytest.fixture(scope="module")
def vault(workdir: Path) -> Iterator[VaultServer]:
    server = VaultServer(workdir / "vault", heartbeat_interval=1, unresponsive_after=1).start()
    try:
        yield server
    finally:
        server.kill()
        server.close()


def _lease_held(vault: VaultServer) -> bool:
    return bool(vault.ok("GET", "/api/v1/vault")["scheduler"]["holder"])


def test_healthy_vault_passes_every_check(vault: VaultServer) -> None:
    wait_for(lambda: _lease_held(vault), what="the scheduler to take its lease")
    report = run_vault_doctor(vault.data)
    assert report.rc == 0, report.not_passing()
    assert set(report.verdicts().values()) == {"pass"}, report.not_passing()
    lease = report.check("scheduler-lease")
    assert lease["details"]["holder"].split(":")[1] == str(vault.process.pid if vault.process else "")
    assert "renewed" in lease["summary"]


def test_unresponsive_agent(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    assert agent.heartbeat().status_code == 200
    time.sleep(1.5)  # the vault allows heartbeat_interval * unresponsive_after = 1 s of silence
    report = run_vault_doctor(vault.data)
    check = report.check("unresponsive-agents")
    assert check["verdict"] == "fail" and check["error"]["code"] == "AgentUnresponsive"
    assert check["error"]["params"]["machine"] == agent.hostname
    assert check["error"]["params"]["missed"] >= 1
    assert agent.hostname in check["details"]["unresponsive"]
    assert f"on {agent.hostname}: `kluis doctor`" in check["fix"]
    assert report.rc == 1


def test_item_failing_repeatedly(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    policy = vault.policy()
    item = vault.item(agent.machine_id, policy["id"], name="always-full")
    for _ in range(3):
        vault.backup(item["id"])
        job = next(j for j in agent.work(wait=5)["jobs"] if j["item"]["id"] == item["id"])
        error = {"code": "SalLowDiskSpace", "params": {"path": "/var/lib/kluis/scratch", "free": "1 MiB"}}
        assert agent.result(job["id"], "Failed", error=error).status_code == 200
    report = run_vault_doctor(vault.data)
    check = report.check("failing-items")
    assert check["verdict"] == "fail" and check["error"]["code"] == "ItemBackupsFailing"
    assert check["error"]["params"] == {
        "count": 3,
        "item": "always-full",
        "machine": agent.hostname,
        "code": "SalLowDiskSpace",
    }
    assert check["fix"].startswith(f"kluis jobs show {job['id']}")


def test_database_not_migrated_foreign_and_store_missing(vault: VaultServer, tmp_path: Path) -> None:
    cfg = VaultConfig.load(vault.data / CONFIG_NAME)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    cfg.db_url = f"sqlite:///{empty}"
    cfg.store_url = f"file://{tmp_path / 'no-store'}"
    cfg.save(tmp_path / "new.toml")
    report = run_vault_doctor(vault.data, "--config", str(tmp_path / "new.toml"))
    assert report.verdict("vault-database") == "pass"
    check = report.check("vault-migrations")
    assert check["verdict"] == "fail" and check["error"]["code"] == "VaultMigrationsPending"
    assert check["error"]["params"]["current"] == "none"
    assert "systemctl restart kluis-vault" in check["fix"]
    for later in ("scheduler-lease", "unresponsive-agents", "failing-items"):
        assert report.verdict(later) == "skip", later
    store = report.check("vault-store")
    assert store["verdict"] == "fail" and store["error"]["code"] == "StoreUnavailable"
    assert not (tmp_path / "no-store").exists(), "the doctor must not create the store"

    foreign = VaultConfig.load(vault.data / CONFIG_NAME)
    foreign.vault_id = "0" * 32
    foreign.save(tmp_path / "foreign.toml")
    other = run_vault_doctor(vault.data, "--config", str(tmp_path / "foreign.toml"))
    check = other.check("vault-database")
    assert check["verdict"] == "fail" and check["error"]["code"] == "VaultDatabaseUnavailable"
    assert f"belongs to vault {cfg.vault_id}" in check["error"]["params"]["reason"]


def test_scheduler_lease_not_held(vault: VaultServer) -> None:
    # A stopped vault gives its lease up.
    vault.stop()
    report = run_vault_doctor(vault.data)
    check = report.check("scheduler-lease")
    assert check["verdict"] == "fail" and check["error"]["code"] == "SchedulerLeaseNotHeld"
    assert "released the lease when it stopped" in check["error"]["params"]["reason"]
    assert check["fix"].startswith("systemctl start kluis-vault")

    # A killed one keeps it until it expires (lease_ttl 2 s), then the doctor names the holder.
    vault.start()
    wait_for(lambda: _lease_held(vault), what="the scheduler to take its lease")
    pid = vault.process.pid if vault.process else 0
    vault.kill()
    time.sleep(2.5)
    expired = run_vault_doctor(vault.data)
    check = expired.check("scheduler-lease")
    assert check["verdict"] == "fail" and check["error"]["code"] == "SchedulerLeaseNotHeld"
    assert f":{pid}:" in check["error"]["params"]["reason"]
    assert "stopped renewing it" in check["error"]["params"]["reason"]


def test_vault_configuration_invalid(vault: VaultServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    doc = tomllib.loads((vault.data / CONFIG_NAME).read_text())
    # A slip an administrator makes: a number written as a word.
    doc["limits"]["max_machines"] = "fifty"
    bad.write_text(tomli_w.dumps(doc))
    report = run_vault_doctor(vault.data, "--config", str(bad))
    check = report.check("vault-config")
    assert check["verdict"] == "fail" and check["error"]["code"] == "VaultConfigInvalid", check
    assert str(bad) in check["fix"]
    for later in ("vault-database", "vault-store"):
        assert report.verdict(later) == "skip", report.check(later)
    assert report.rc != 0


def test_scheduled_run_missed_while_the_scheduler_was_off(workdir: Path) -> None:
    """Protection set up three days ago on a vault whose scheduler is switched off."""
    server = VaultServer(workdir / "vault-no-scheduler", scheduler_enabled=False).start()
    try:
        agent = Agent(server).registered()
        item = server.item(agent.machine_id, server.policy()["id"], name="never-scheduled")
        with server.db.write() as s:
            row = s.get(ProtectedItem, item["id"])
            assert row is not None
            row.created_at = row.created_at - dt.timedelta(days=3)
            assert row.last_slot_at is not None
            row.last_slot_at = row.last_slot_at - dt.timedelta(days=3)
        report = run_vault_doctor(server.data)
        check = report.check("scheduled-runs")
        assert check["verdict"] == "warn" and check["error"]["code"] == "ScheduledBackupNotRun", check
        params = check["error"]["params"]
        assert params["item"] == f"never-scheduled on {agent.hostname}"
        assert "switched off" in params["reason"] and "[scheduler]" in check["fix"]
        # 02:30 Amsterdam is the policy's time: the missed run is the latest one before now.
        due = dt.datetime.fromisoformat(params["due"]).astimezone(ZoneInfo("Europe/Amsterdam"))
        assert (due.hour, due.minute) == (2, 30)
        assert dt.datetime.now(dt.UTC) - due < dt.timedelta(days=1, hours=2)
    finally:
        server.kill()
    # With the scheduler on, the vault handles the missed run once, and the check passes.
    server.config.scheduler_enabled = True
    server.config.save(server.data / CONFIG_NAME)
    server.start()
    try:
        wait_for(
            lambda: server.ok("GET", "/api/v1/jobs", params={"item_id": item["id"], "type": "Backup"}),
            what="the missed run's job",
        )
        assert run_vault_doctor(server.data).verdict("scheduled-runs") == "pass"
    finally:
        server.kill()
        server.close()


def test_too_many_disk_backups_in_one_hour_on_a_host(workdir: Path) -> None:
    """Five VMs of one host on one policy start within its spread window: a warning."""
    server = VaultServer(workdir / "vault-crowded", scheduler_enabled=False).start()
    try:
        host = Agent(server).registered()
        other = Agent(server).registered()
        policy = server.policy()
        vms = [server.item(host.machine_id, policy["id"], name=f"vm-{i}", kind="disks") for i in range(5)]
        for i in range(4):  # four on another host are within the rule
            server.item(other.machine_id, policy["id"], name=f"other-{i}", kind="disks")
        report = run_vault_doctor(server.data)
        check = report.check("schedule-overlap")
        assert check["verdict"] == "warn" and check["error"]["code"] == "ScheduleOverlapOnHost", check
        assert check["error"]["params"] == {"count": 5, "host": host.hostname}
        assert [h["host"] for h in check["details"]["hosts"]] == [host.hostname]
        assert "kluis items set-policy" in check["fix"]
        # One VM moved to a policy three hours later: four in the hour, the check passes.
        later = server.policy(schedule={"kind": "daily", "timezone": "Europe/Amsterdam", "times": ["05:30"]})
        server.ok("PATCH", f"/api/v1/items/{vms[0]['id']}", json={"policy": later["id"]})
        assert run_vault_doctor(server.data).verdict("schedule-overlap") == "pass"
    finally:
        server.kill()
        server.close()
