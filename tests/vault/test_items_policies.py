"""Policies (validation ranges) and protected items (enable, stop, soft delete, undelete, resume)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.vault.helpers import Agent, VaultServer

DAILY = {"kind": "daily", "timezone": "Europe/Amsterdam", "times": ["02:30"]}


def _policy(vault: VaultServer, name: str, schedule: dict[str, Any], retention: dict[str, Any]) -> Any:
    return vault.request(
        "POST", "/api/v1/policies", json={"name": name, "schedule": schedule, "retention": retention}
    )


@pytest.mark.parametrize(
    ("schedule", "retention", "fragment"),
    [
        (DAILY, {"daily": 0}, "daily retention"),
        (DAILY, {"daily": 10000}, "9999"),
        (DAILY, {"weekly": 5164}, "5163"),
        (DAILY, {"daily": 7, "monthly": 1189, "monthly_day": 1}, "1188"),
        (DAILY, {"daily": 7, "yearly": 100, "yearly_day": 1}, "99"),
        (DAILY, {"daily": 7, "instant_days": 0}, "1 to 5"),
        (DAILY, {"daily": 7, "instant_days": 6}, "1 to 5"),
        ({**DAILY, "timezone": "Mars/Olympus"}, {"daily": 7}, "IANA"),
        ({**DAILY, "times": ["01:00", "02:00", "03:00", "04:00"]}, {"daily": 7}, "at most 3"),
        (
            {"kind": "hourly", "interval_hours": 5, "window_start": "08:00", "window_hours": 12},
            {"daily": 7},
            "4, 6, 8, 12",
        ),
        ({"kind": "weekly", "weekdays": ["sunday"], "times": ["22:00"]}, {"daily": 7}, "weekly schedule"),
        ({"kind": "monthly", "times": ["22:00"]}, {"daily": 7}, "daily, weekly, hourly"),
    ],
)
def test_policy_validation(
    vault: VaultServer, schedule: dict[str, Any], retention: dict[str, Any], fragment: str
) -> None:
    response = _policy(vault, "bad", schedule, retention)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "ValidationFailed"
    assert fragment in response.json()["message"]


def test_policy_ranges_at_their_limits_are_accepted(vault: VaultServer) -> None:
    retention = {
        "daily": 9999,
        "weekly": 5163,
        "monthly": 1188,
        "monthly_day": "last",
        "yearly": 99,
        "yearly_month": 12,
        "yearly_week": "last",
        "yearly_weekday": "sunday",
        "instant_days": 5,
    }
    ok = _policy(vault, "limits", DAILY, retention)
    assert ok.status_code == 201, ok.text
    hourly = {
        "kind": "hourly",
        "timezone": "UTC",
        "interval_hours": 4,
        "window_start": "00:00",
        "window_hours": 24,
    }
    assert _policy(vault, "hourly", hourly, {"daily": 7}).status_code == 201
    again = _policy(vault, "limits", DAILY, retention)
    assert again.status_code == 409 and again.json()["code"] == "ResourceExists"


def test_disk_items_must_fit_the_instant_point_limit(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    hourly = {
        "kind": "hourly",
        "timezone": "UTC",
        "interval_hours": 4,
        "window_start": "00:00",
        "window_hours": 24,
    }
    policy = vault.ok(
        "POST",
        "/api/v1/policies",
        json={"name": "every-4h", "schedule": hourly, "retention": {"daily": 7, "instant_days": 5}},
    )
    # 6 runs a day kept 5 days = 30 instant points; a machine holds at most 18.
    disks = vault.request(
        "POST",
        "/api/v1/items",
        json={
            "machine_id": agent.machine_id,
            "name": "disks",
            "kind": "disks",
            "disks": ["vm-1"],
            "policy": policy["id"],
        },
    )
    assert disks.status_code == 422 and "18" in disks.json()["message"]
    files = vault.item(agent.machine_id, policy["id"], name="files")
    assert files["state"] == "Protected"


def test_policy_update_delete_and_in_use(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    policy = vault.policy(name="to-change")
    changed = vault.ok(
        "PUT", "/api/v1/policies/to-change", json={"schedule": {**DAILY, "times": ["03:00", "15:00"]}}
    )
    assert changed["schedule"]["times"] == ["03:00", "15:00"] and changed["retention"]["daily"] == 30
    item = vault.item(agent.machine_id, policy["id"])
    in_use = vault.request("DELETE", f"/api/v1/policies/{policy['id']}")
    assert in_use.status_code == 409 and in_use.json()["code"] == "PolicyInUse"
    vault.ok("POST", f"/api/v1/items/{item['id']}/stop", json={"delete_data": False})
    assert vault.request("DELETE", f"/api/v1/policies/{policy['id']}").status_code == 204
    assert vault.request("GET", "/api/v1/policies/to-change").status_code == 404


def test_item_validation(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    policy = vault.policy()
    base = {"machine_id": agent.machine_id, "name": "x", "kind": "files", "policy": policy["id"]}
    for change in (
        {"paths": ["relative/path"]},
        {"paths": []},
        {"kind": "tapes", "paths": ["/a"]},
        {"paths": ["/a"], "machine_id": "0" * 32},
        {"paths": ["/a"], "policy": "nope"},
    ):
        response = vault.request("POST", "/api/v1/items", json={**base, **change})
        assert response.status_code in (404, 422), (change, response.text)
    vault.item(agent.machine_id, policy["id"], name="dup")
    dup = vault.request("POST", "/api/v1/items", json={**base, "name": "dup", "paths": ["/a"]})
    assert dup.status_code == 409 and dup.json()["code"] == "ResourceExists"


def test_list_filters_refuse_values_that_do_not_exist(vault: VaultServer) -> None:
    # A mistyped state or status would match nothing and look like an empty list.
    agent = Agent(vault).registered()
    vault.item(agent.machine_id, vault.policy()["id"], name="filtered")
    for path, params, good in (
        ("/api/v1/items", {"state": "protected"}, {"state": "Protected"}),
        ("/api/v1/jobs", {"status": "Done"}, {"status": "Completed"}),
        ("/api/v1/jobs", {"type": "backup"}, {"type": "ConfigureBackup"}),
        ("/api/v1/points", {"state": "Gone"}, {"state": "Expired"}),
        ("/api/v1/alerts", {"status": "Open"}, {"status": "Active"}),
    ):
        bad = vault.request("GET", path, params=params)
        assert bad.status_code == 422 and bad.json()["code"] == "ValidationFailed", (path, bad.text)
        assert next(iter(params.values())) in bad.json()["message"]
        assert isinstance(vault.ok("GET", path, params=good), list)
    mine = {"machine_id": agent.machine_id}  # the vault is shared with other tests
    protected = vault.ok("GET", "/api/v1/items", params={**mine, "state": "Protected"})
    assert [i["name"] for i in protected] == ["filtered"]
    assert vault.ok("GET", "/api/v1/items", params={**mine, "state": "SoftDeleted"}) == []
    assert vault.ok("GET", "/api/v1/points", params={**mine, "state": ""}) == []  # empty: every state


def test_protection_lifecycle(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    policy = vault.policy()
    item = vault.item(agent.machine_id, policy["id"])
    item_id = item["id"]
    assert item["state"] == "Protected" and item["job"]["type"] == "ConfigureBackup"
    assert item["job"]["status"] == "Completed"

    stopped = vault.ok("POST", f"/api/v1/items/{item_id}/stop", json={"delete_data": False})
    assert stopped["state"] == "ProtectionStopped" and stopped["job"]["type"] == "DisableBackup"
    backup = vault.request("POST", f"/api/v1/items/{item_id}/backup", json={})
    assert backup.status_code == 409 and backup.json()["code"] == "UserErrorBcmDatasourceNotPresent"
    again = vault.request("POST", f"/api/v1/items/{item_id}/stop", json={"delete_data": False})
    assert again.status_code == 409 and again.json()["code"] == "ItemStateInvalid"

    resumed = vault.ok("POST", f"/api/v1/items/{item_id}/resume", json={})
    assert resumed["state"] == "Protected" and resumed["policy_id"] == policy["id"]

    deleted = vault.ok("POST", f"/api/v1/items/{item_id}/stop", json={"delete_data": True})
    assert deleted["state"] == "SoftDeleted" and deleted["job"]["type"] == "DeleteBackupData"
    purge = dt.datetime.fromisoformat(deleted["purge_after"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=13, hours=23) < purge <= dt.timedelta(days=14)
    assert vault.request("POST", f"/api/v1/items/{item_id}/resume", json={}).status_code == 409

    undeleted = vault.ok("POST", f"/api/v1/items/{item_id}/undelete")
    assert undeleted["state"] == "ProtectionStopped" and undeleted["purge_after"] is None
    assert undeleted["job"]["type"] == "Undelete"
    assert vault.request("POST", f"/api/v1/items/{item_id}/undelete").status_code == 409
    assert vault.ok("POST", f"/api/v1/items/{item_id}/resume", json={})["state"] == "Protected"

    other = vault.policy()
    moved = vault.ok("PATCH", f"/api/v1/items/{item_id}", json={"policy": other["name"]})
    assert moved["policy_id"] == other["id"]
    types = [j["type"] for j in vault.ok("GET", "/api/v1/jobs", params={"item_id": item_id})]
    assert types.count("ConfigureBackup") == 4 and "Undelete" in types


def test_machine_with_data_cannot_be_removed(vault: VaultServer) -> None:
    agent = Agent(vault).registered()
    item = vault.item(agent.machine_id, vault.policy()["id"])
    refused = vault.request("DELETE", f"/api/v1/machines/{agent.machine_id}")
    assert refused.status_code == 409 and refused.json()["code"] == "MachineHasProtectedItems"
    vault.ok("POST", f"/api/v1/items/{item['id']}/stop", json={"delete_data": True})
    still = vault.request("DELETE", f"/api/v1/machines/{agent.machine_id}")
    assert still.status_code == 409  # soft-deleted data can still be undeleted
