"""Disk backup jobs end to end: extension install, snapshot, changed-block incremental, errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.agent.helpers import wait_for
from tests.disks.conftest import Site


def _sync(path: Path) -> None:
    subprocess.run(["sync", "-f", str(path)], check=True)


def _item(site: Site, name: str) -> dict[str, Any]:
    items = site.vault.ok("GET", "/api/v1/items")
    return next(i for i in items if i["name"] == name)


def test_full_then_changed_block_incremental(site: Site) -> None:
    (site.guest.mountpoint / "hello.txt").write_text("hello from the guest\n")
    (site.guest.mountpoint / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    _sync(site.guest.mountpoint)

    made = site.cli("protect", "disks", str(site.guest.image), "--policy", "vms", "--name", "vm1", "--json")
    assert made.rc == 0, made.stdout + made.stderr
    item = made.json
    assert item["kind"] == "disks" and item["spec"]["disks"] == ["vm1"]
    assert (site.agent.config_dir / "vms" / "vm1.toml").stat().st_mode & 0o777 == 0o600

    full = site.backup(item["id"])
    assert full["status"] == "Completed", full
    assert full["phase"] == "Transfer data to vault"
    stats = full["result"]["stats"]
    assert stats["provider"] == "reflink" and stats["consistency"] == "file-system"
    assert stats["snapshot"]["kept"] is True and stats["changed_extents_used"] is False
    assert stats["size"] == 64 * 1024 * 1024
    point = site.vault.ok("GET", f"/api/v1/points/{full['result']['point_id']}")
    assert point["header"]["consistency"] == "file-system" and point["header"]["kind"] == "disk"

    # The extension was installed from the vault and its handler state reached the vault.
    ext_dir = site.agent.scratch / "extensions" / "snapshot"
    assert ext_dir.is_dir() and len(list(ext_dir.iterdir())) == 1
    machine_id = site.agent.machine_id()

    def reported() -> bool:
        m = site.vault.ok("GET", f"/api/v1/machines/{machine_id}")
        return any(e.get("name") == "snapshot" and e.get("state") == "succeeded" for e in m["extensions"])

    wait_for(reported, timeout=10, what="the extension's handler state in a heartbeat")

    # A small change: the incremental reads only the changed extents.
    with open(site.guest.mountpoint / "hello.txt", "a") as fh:
        fh.write("a second line\n")
    _sync(site.guest.mountpoint)
    inc = site.backup(item["id"])
    assert inc["status"] == "Completed", inc
    s2 = inc["result"]["stats"]
    assert s2["changed_extents_used"] is True and s2["previous_point"] == full["result"]["point_id"]
    assert s2["blocks_read"] > 0 and s2["blocks_read"] * 10 < stats["blocks_read"], (stats, s2)
    assert s2["bytes_read"] < 4 * 1024 * 1024, s2
    assert s2["instant_points"] == 2


def test_extension_uninstall_reinstall_and_points_lock(site: Site) -> None:
    item = _item(site, "vm1")
    listed = site.cli("extension", "list", "--json")
    assert listed.rc == 0, listed.stdout + listed.stderr
    assert [(e["name"], e["state"]) for e in listed.json] == [("snapshot", "succeeded")]
    removed = site.cli("extension", "uninstall", "snapshot", "--json")
    assert removed.rc == 0 and removed.json["uninstalled"] is True, removed.stdout + removed.stderr
    assert site.cli("extension", "list", "--json").json == []
    again = site.cli("extension", "uninstall", "snapshot", "--json")
    assert again.rc != 0 and again.error["code"] == "ResourceNotFound"

    locked = site.cli("points", "lock", "vm1", "--why", "legal hold", "--json")
    assert locked.rc == 0, locked.stdout + locked.stderr
    lock_file = site.agent.scratch / "instant-points" / item["id"] / "lock.json"
    assert "legal hold" in lock_file.read_text()

    # The next backup installs the extension again; the lock does not stop a collection with room.
    job = site.backup(item["id"])
    assert job["status"] == "Completed", job
    assert [e["state"] for e in site.cli("extension", "list", "--json").json] == ["succeeded"]
    unlocked = site.cli("points", "unlock", "vm1", "--json")
    assert unlocked.rc == 0 and unlocked.json["unlocked"] is True, unlocked.stdout + unlocked.stderr
    assert not lock_file.exists()


def test_vanished_disk_image_is_coded(site: Site) -> None:
    image = site.host / "vm" / "gone.img"
    image.write_bytes(b"\0" * (1024 * 1024))
    made = site.cli("protect", "disks", str(image), "--policy", "vms", "--name", "vm-gone", "--json")
    assert made.rc == 0, made.stdout + made.stderr
    image.unlink()
    job = site.backup(made.json["id"])
    assert job["status"] == "Failed" and job["error"]["code"] == "ProtectedMachineNotFound", job
    # Stop protection, retain data: the item is then not actively protected.
    site.vault.ok("POST", f"/api/v1/items/{made.json['id']}/stop", json={"delete_data": False})
    refused = site.vault.request("POST", f"/api/v1/items/{made.json['id']}/backup", None, json={})
    assert refused.status_code >= 400 and "UserErrorBcmDatasourceNotPresent" in refused.text, refused.text


def _kept_days(site: Site, item_id: str, point_id: str) -> float:
    """How long the agent keeps the instant point of ``point_id`` (days, from collection.json)."""
    data = json.loads((site.agent.scratch / "instant-points" / item_id / "collection.json").read_text())
    points = data["points"] if isinstance(data, dict) else data
    kept = [p for p in points if p.get("recovery_point") == point_id]
    assert len(kept) == 1, points
    return (kept[0]["expires"] - kept[0]["created"]) / 86400


def test_policy_instant_days_reach_the_agent(site: Site) -> None:
    """The policy's instant-restore days travel in the job and decide how long the snapshot stays."""
    site.vault.ok(
        "POST",
        "/api/v1/policies",
        json={
            "name": "keep4",
            "schedule": {"kind": "daily", "timezone": "UTC", "times": ["04:00"]},
            "retention": {"daily": 30, "instant_days": 4},
        },
    )
    made = site.cli(
        "protect", "disks", str(site.guest.image), "--policy", "keep4", "--name", "vm-days", "--json"
    )
    assert made.rc == 0, made.stdout + made.stderr
    item_id = made.json["id"]
    first = site.backup(item_id)
    assert first["status"] == "Completed", first
    assert first["result"]["stats"]["instant_days"] == 4
    assert _kept_days(site, item_id, first["result"]["point_id"]) == 4

    # A changed policy applies to the next backup.
    site.vault.ok("PUT", "/api/v1/policies/keep4", json={"retention": {"daily": 30, "instant_days": 1}})
    second = site.backup(item_id)
    assert second["status"] == "Completed", second
    assert second["result"]["stats"]["instant_days"] == 1
    assert _kept_days(site, item_id, second["result"]["point_id"]) == 1
    assert _kept_days(site, item_id, first["result"]["point_id"]) == 4
