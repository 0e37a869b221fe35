"""Jobs: one backup per item, the agent's work queue, progress, results, cancel codes, alerts."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.vault.helpers import Agent, VaultServer


@pytest.fixture(scope="module")
def setup(vault: VaultServer) -> dict[str, Any]:
    """A machine and a daily policy the tests make items under."""
    agent = Agent(vault).registered()
    return {"agent": agent, "policy": vault.policy()}


def _item(vault: VaultServer, setup: dict[str, Any]) -> str:
    return str(vault.item(setup["agent"].machine_id, setup["policy"]["id"])["id"])


def _backup(vault: VaultServer, item_id: str, **body: Any) -> Any:
    return vault.request(
        "POST", f"/api/v1/items/{item_id}/backup", token=vault.token_for("Operator"), json=body
    )


def test_on_demand_backup_lifecycle(vault: VaultServer, setup: dict[str, Any]) -> None:
    agent: Agent = setup["agent"]
    item_id = _item(vault, setup)
    started = _backup(vault, item_id)
    assert started.status_code == 202, started.text
    job = started.json()
    assert job["type"] == "Backup" and job["status"] == "InProgress" and job["trigger"] == "OnDemand"
    retain = dt.datetime.fromisoformat(job["retain_until"])
    assert dt.timedelta(days=29, hours=23) < retain - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)
    work = agent.work(wait=5)
    handed = next(j for j in work["jobs"] if j["id"] == job["id"])
    assert handed["item"]["spec"]["paths"] == ["/srv/data"]
    assert vault.ok("GET", f"/api/v1/jobs/{job['id']}")["phase"] == "Take snapshot"
    assert (
        agent.progress(job["id"], phase="Transfer data to vault", percent=40, bytes_done=10).json()["cancel"]
        is False
    )
    point_id = agent.backup(item_id, job["id"])
    done = agent.result(job["id"], "Completed", stats={"files": 3})
    assert done.status_code == 200, done.text
    final = vault.ok("GET", f"/api/v1/jobs/{job['id']}")
    assert final["status"] == "Completed" and final["result"]["point_id"] == point_id
    assert final["progress"]["percent"] == 100.0 and final["progress"]["bytes_done"] == 10
    point = vault.ok("GET", f"/api/v1/points/{point_id}")
    assert point["item_id"] == item_id and point["trigger"] == "OnDemand"
    assert point["retain_until"] == job["retain_until"]
    assert vault.ok("GET", f"/api/v1/items/{item_id}")["last_backup_status"] == "Completed"


def test_second_backup_of_an_item_is_refused(vault: VaultServer, setup: dict[str, Any]) -> None:
    item_id = _item(vault, setup)
    first = _backup(vault, item_id)
    assert first.status_code == 202
    second = _backup(vault, item_id)
    assert second.status_code == 409
    assert second.json()["code"] == "UserErrorBackupOperationInProgress"
    assert second.json()["params"]["job"] == first.json()["id"]
    vault.ok("POST", f"/api/v1/jobs/{first.json()['id']}/cancel")
    assert _backup(vault, item_id).status_code == 202


def test_concurrent_backup_requests_start_one(vault: VaultServer, setup: dict[str, Any]) -> None:
    item_id = _item(vault, setup)
    codes: list[int] = []
    barrier = threading.Barrier(6)

    def go() -> None:
        barrier.wait()
        codes.append(_backup(vault, item_id).status_code)

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [202, 409, 409, 409, 409, 409]
    running = vault.ok("GET", "/api/v1/jobs", params={"item_id": item_id, "status": "InProgress"})
    assert len(running) == 1


def _login(vault: VaultServer) -> list[str]:
    return ["--vault", vault.url, "--token", vault.admin_token]


def _cli(vault: VaultServer, *args: str) -> subprocess.CompletedProcess[str]:
    """``kluis`` as a user runs it against this vault (admin token, English, wide tables)."""
    env = {**os.environ, "KLUIS_LANG": "en", "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-c", "from kluis.cli.main import app; app()", *args, *_login(vault)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_duplicate_trigger_is_a_failed_job_without_an_alert(
    vault: VaultServer, setup: dict[str, Any]
) -> None:
    item_id = _item(vault, setup)
    alerts_before = {a["id"] for a in vault.ok("GET", "/api/v1/alerts")}
    first = _backup(vault, item_id)
    assert first.status_code == 202, first.text
    second = _backup(vault, item_id)
    # The caller still hears the catalog's refusal ...
    assert second.status_code == 409 and second.json()["code"] == "UserErrorBackupOperationInProgress"
    # ... and the history keeps the trigger that could not start, as a Failed backup.
    history = vault.ok("GET", "/api/v1/jobs", params={"item_id": item_id, "type": "Backup"})
    assert {j["status"] for j in history} == {"InProgress", "Failed"} and len(history) == 2, history
    failed = next(j for j in history if j["status"] == "Failed")
    assert failed["error"]["code"] == "UserErrorBackupOperationInProgress"
    assert failed["error"]["params"]["job"] == first.json()["id"]
    assert failed["trigger"] == "OnDemand" and failed["created_by"] == "user-operator"
    assert failed["ended_at"] and failed["dispatched_at"] is None
    assert {a["id"] for a in vault.ok("GET", "/api/v1/alerts")} == alerts_before  # seeds: no alert
    running = vault.ok("GET", "/api/v1/jobs", params={"item_id": item_id, "status": "InProgress"})
    assert [j["id"] for j in running] == [first.json()["id"]]

    listed = _cli(vault, "jobs", "list", "--item", item_id)
    assert listed.returncode == 0, listed.stderr + listed.stdout
    row = next(line for line in listed.stdout.splitlines() if failed["id"][:12] in line)
    assert "Failed" in row and "UserErrorBackupOperationInProgress" in row
    as_json = _cli(vault, "jobs", "list", "--item", item_id, "--json")
    assert failed["id"] in {j["id"] for j in json.loads(as_json.stdout)}
    shown = _cli(vault, "jobs", "show", failed["id"])
    assert "could not start" in shown.stdout and first.json()["id"] in shown.stdout, shown.stdout

    # A refused trigger does not use up the item's daily on-demand allowance, nor block the next.
    vault.ok("POST", f"/api/v1/jobs/{first.json()['id']}/cancel")
    assert _backup(vault, item_id).status_code == 202


def test_failed_job_keeps_the_agents_detail(vault: VaultServer, setup: dict[str, Any]) -> None:
    agent: Agent = setup["agent"]
    item_id = _item(vault, setup)
    job = _backup(vault, item_id).json()
    agent.work(wait=5)
    error = {
        "code": "34506",
        "params": {"path": "/var/lib/kluis/kluis.kek"},
        "detail": "the KEK file is missing",
    }
    warning = {
        "code": "SalLowDiskSpace",
        "params": {"path": "/var"},
        "detail": "5% of 20 GiB, at least 1 GiB",
    }
    done = agent.result(job["id"], "Failed", error=error, warnings=[warning])
    assert done.status_code == 200, done.text
    stored = vault.ok("GET", f"/api/v1/jobs/{job['id']}")
    assert stored["error"]["code"] == "34506" and stored["error"]["detail"] == "the KEK file is missing"
    assert "the KEK file is missing" in stored["error"]["message"]
    assert "/var/lib/kluis/kluis.kek" in stored["error"]["message"]
    assert stored["warnings"][0]["detail"] == "5% of 20 GiB, at least 1 GiB"
    shown = _cli(vault, "jobs", "show", job["id"])
    assert "the KEK file is missing" in shown.stdout and "/var/lib/kluis/kluis.kek" in shown.stdout, (
        shown.stdout + shown.stderr
    )
    as_json = json.loads(_cli(vault, "jobs", "show", job["id"], "--json").stdout)
    assert as_json["error"]["detail"] == "the KEK file is missing"


def test_completed_backup_needs_its_point(vault: VaultServer, setup: dict[str, Any]) -> None:
    agent: Agent = setup["agent"]
    item_id = _item(vault, setup)
    job = _backup(vault, item_id).json()
    agent.work(wait=5)
    refused = agent.result(job["id"], "Completed")
    assert refused.status_code == 422 and "recovery point" in refused.json()["message"]
    failed = agent.result(job["id"], "Failed", error={"code": "SalLowDiskSpace", "params": {"path": "/var"}})
    assert failed.status_code == 200
    assert failed.json()["error"]["code"] == "SalLowDiskSpace"
    assert failed.json()["error"]["causes"]  # rendered from the catalog, not the agent's text
    again = agent.result(job["id"], "Failed", error={"code": "SalLowDiskSpace"})
    assert again.status_code == 200  # a retried report is accepted
    assert agent.result(job["id"], "Completed").status_code == 409


def test_cancel_codes(vault: VaultServer, setup: dict[str, Any]) -> None:
    agent: Agent = setup["agent"]
    operator = vault.token_for("Operator")

    def cancel(job_id: str) -> Any:
        return vault.request("POST", f"/api/v1/jobs/{job_id}/cancel", token=operator)

    # A type that cannot be cancelled.
    config_job = vault.item(agent.machine_id, setup["policy"]["id"])["job"]
    response = cancel(config_job["id"])
    assert response.status_code == 409 and response.json()["code"] == "JobCancelNotSupported"
    # Not yet taken by the agent: cancelled at once.
    item_id = _item(vault, setup)
    queued = _backup(vault, item_id).json()
    assert cancel(queued["id"]).json()["status"] == "Cancelled"
    # Not in progress any more.
    response = cancel(queued["id"])
    assert response.status_code == 409 and response.json()["code"] == "JobNotInProgress"
    # Running: Cancelling until the agent confirms; a second cancel is refused.
    running = _backup(vault, item_id).json()
    agent.work(wait=5)
    assert cancel(running["id"]).json()["status"] == "Cancelling"
    response = cancel(running["id"])
    assert response.status_code == 409 and response.json()["code"] == "JobNotCancellable"
    assert running["id"] in agent.work(wait=0)["cancel"]
    assert agent.progress(running["id"], percent=10).json()["cancel"] is True
    assert agent.result(running["id"], "Cancelled").json()["status"] == "Cancelled"
    # Nearly done: no longer cancellable.
    late = _backup(vault, item_id).json()
    agent.work(wait=5)
    agent.progress(late["id"], percent=97)
    response = cancel(late["id"])
    assert response.status_code == 409 and response.json()["code"] == "JobNotCancellable"
    assert "nearly done" in response.json()["message"]
    # A cancel the agent could not carry out is recorded as JobCancelFailed.
    agent.result(late["id"], "Failed", error={"code": "SalLowDiskSpace"})
    racing = _backup(vault, item_id).json()
    agent.work(wait=5)
    cancel(racing["id"])
    agent.backup(item_id, racing["id"])
    finished = agent.result(racing["id"], "Completed").json()
    assert finished["status"] == "Completed"
    assert finished["cancel_error"]["code"] == "JobCancelFailed"


def test_long_poll_wakes_when_work_arrives(vault: VaultServer, setup: dict[str, Any]) -> None:
    agent: Agent = setup["agent"]
    item_id = _item(vault, setup)
    agent.work(wait=0)  # drain
    got: dict[str, Any] = {}

    def poll() -> None:
        start = time.monotonic()
        got["work"] = agent.work(wait=20)
        got["took"] = time.monotonic() - start

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)
    job = _backup(vault, item_id).json()
    thread.join()
    assert [j["id"] for j in got["work"]["jobs"]] == [job["id"]]
    assert got["took"] < 5
    empty_start = time.monotonic()
    assert agent.work(wait=1) == {"jobs": [], "cancel": []}
    assert time.monotonic() - empty_start >= 0.9


def test_failed_backup_raises_an_alert_except_for_seed_exceptions(
    vault: VaultServer, setup: dict[str, Any]
) -> None:
    agent: Agent = setup["agent"]
    item_id = _item(vault, setup)
    before = {a["id"] for a in vault.ok("GET", "/api/v1/alerts")}

    def fail_with(code: str, **params: Any) -> None:
        job = _backup(vault, item_id).json()
        agent.work(wait=5)
        assert agent.result(job["id"], "Failed", error={"code": code, "params": params}).status_code == 200

    fail_with("UserErrorBackupOperationInProgress", item="x", job="y")
    fail_with("UserErrorBcmDatasourceNotPresent", item="x", state="ProtectionStopped")
    assert {a["id"] for a in vault.ok("GET", "/api/v1/alerts")} == before
    fail_with("SalLowDiskSpace", path="/var", free="1 GiB", needed="5 GiB")
    fail_with("SalLowDiskSpace", path="/var", free="1 GiB", needed="5 GiB")
    new = [a for a in vault.ok("GET", "/api/v1/alerts") if a["id"] not in before]
    assert len(new) == 1  # the same failure again updates the alert
    assert new[0]["code"] == "SalLowDiskSpace" and new[0]["item_id"] == item_id
    assert new[0]["details"]["occurrences"] == 2 and new[0]["status"] == "Active"
    # A successful backup of the item resolves it.
    job = _backup(vault, item_id).json()
    agent.work(wait=5)
    agent.backup(item_id, job["id"])
    agent.result(job["id"], "Completed")
    alert = next(a for a in vault.ok("GET", "/api/v1/alerts") if a["id"] == new[0]["id"])
    assert alert["status"] == "Resolved"


def test_failed_restore_raises_an_alert(vault: VaultServer, setup: dict[str, Any]) -> None:
    agent: Agent = setup["agent"]
    item_id = _item(vault, setup)
    job = _backup(vault, item_id).json()
    agent.work(wait=5)
    point_id = agent.backup(item_id, job["id"])
    agent.result(job["id"], "Completed")
    restore = vault.request(
        "POST",
        f"/api/v1/items/{item_id}/restore",
        token=vault.token_for("Operator"),
        json={"point_id": point_id, "target_path": "/restore"},
    )
    assert restore.status_code == 202, restore.text
    handed = agent.work(wait=5)["jobs"]
    assert handed[0]["type"] == "Restore" and handed[0]["params"]["point_id"] == point_id
    agent.result(restore.json()["id"], "Failed", error={"code": "RestoreTargetInvalid", "params": {}})
    assert any(a["job_id"] == restore.json()["id"] for a in vault.ok("GET", "/api/v1/alerts"))
    resolved = vault.request(
        "POST",
        f"/api/v1/alerts/{vault.ok('GET', '/api/v1/alerts')[0]['id']}/resolve",
        token=vault.token_for("Operator"),
    )
    assert resolved.json()["status"] == "Resolved"


def test_restore_to_another_machine_may_read_the_source(vault: VaultServer, setup: dict[str, Any]) -> None:
    agent: Agent = setup["agent"]
    item_id = _item(vault, setup)
    job = _backup(vault, item_id).json()
    agent.work(wait=5)
    point_id = agent.backup(item_id, job["id"])
    agent.result(job["id"], "Completed")
    target = Agent(vault).registered()
    url = f"/api/v1/machines/{agent.machine_id}/repo/objects/points/{point_id}"
    assert target.call("GET", url).status_code == 403
    restore = vault.ok(
        "POST",
        f"/api/v1/items/{item_id}/restore",
        json={"point_id": point_id, "target_machine_id": target.machine_id},
    )
    assert target.work(wait=5)["jobs"][0]["repository"]["machine_id"] == agent.machine_id
    assert target.call("GET", url).status_code == 200
    target.result(restore["id"], "Completed")
    assert target.call("GET", url).status_code == 403


def test_on_demand_limit_and_retain_until(make_vault: Callable[..., VaultServer]) -> None:
    limited = make_vault(on_demand_daily_limit=2).start()
    try:
        agent = Agent(limited).registered()
        item_id = limited.item(agent.machine_id, limited.policy()["id"])["id"]
        soon = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).isoformat()
        assert _backup(limited, item_id, retain_until=soon).status_code == 422
        naive = (dt.datetime.now() + dt.timedelta(days=3)).replace(tzinfo=None).isoformat()
        assert _backup(limited, item_id, retain_until=naive).status_code == 422
        until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=90)).replace(microsecond=0)
        for _ in range(2):
            job = _backup(limited, item_id, retain_until=until.isoformat()).json()
            assert dt.datetime.fromisoformat(job["retain_until"]) == until
            limited.ok("POST", f"/api/v1/jobs/{job['id']}/cancel")
        third = _backup(limited, item_id)
        assert third.status_code == 429 and third.json()["code"] == "OnDemandBackupLimitReached"
        assert third.json()["params"]["limit"] == 2
    finally:
        limited.stop()
