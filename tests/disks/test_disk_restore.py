"""Disk restore jobs: instant restore from the kept snapshot, restore from the vault, replace refused.

Runs after test_disk_backup.py (same module-scoped site is not shared across modules, so
this module makes its own backups).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.disks.conftest import Site
from tests.extensions.helpers import run


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _restore(site: Site, item_id: str, point_id: str, **body: Any) -> dict[str, Any]:
    job = site.vault.ok("POST", f"/api/v1/items/{item_id}/restore", json={"point_id": point_id, **body})
    return site.vault.wait_job(job["id"], timeout=60)


def _kept(site: Site, item_id: str) -> list[dict[str, Any]]:
    data = json.loads((site.agent.scratch / "instant-points" / item_id / "collection.json").read_text())
    points = data["points"] if isinstance(data, dict) else data
    return list(points)


def test_restore_instant_vault_and_replace(site: Site) -> None:
    (site.guest.mountpoint / "note.txt").write_text("version one\n")
    subprocess.run(["sync", "-f", str(site.guest.mountpoint)], check=True)
    made = site.cli("protect", "disks", str(site.guest.image), "--policy", "vms", "--name", "vmr", "--json")
    assert made.rc == 0, made.stdout + made.stderr
    item_id = made.json["id"]
    done = site.backup(item_id)
    assert done["status"] == "Completed", done
    point_id = done["result"]["point_id"]
    kept = [p for p in _kept(site, item_id) if p.get("recovery_point") == point_id]
    assert len(kept) == 1
    snap_file = Path(kept[0]["snapshot"]["disks"][0]["read_path"])
    expected = _digest(snap_file)

    # Instant restore: the snapshot is still on this host.
    out1 = site.workdir / "restore-instant"
    first = _restore(site, item_id, point_id, target_path=str(out1))
    assert first["status"] == "Completed", first
    stats = first["result"]["stats"]
    assert stats["instant"] is True and stats["source"] == "local snapshot" and "instant" in stats["message"]
    assert _digest(out1 / "root.img") == expected

    # Without the local snapshot the disk comes from the vault, byte for byte the same.
    os.chmod(snap_file, 0o600)
    snap_file.unlink()
    out2 = site.workdir / "restore-vault"
    second = _restore(site, item_id, point_id, target_path=str(out2))
    assert second["status"] == "Completed", second
    assert second["result"]["stats"]["instant"] is False
    assert _digest(out2 / "root.img") == expected

    # The restored image holds the guest's file system with the file as it was.
    mnt = site.workdir / "restored-mnt"
    mnt.mkdir()
    dev = run("losetup", "-f", "--show", "-r", str(out2 / "root.img")).strip()
    try:
        run("mount", "-o", "ro,noload", dev, str(mnt))
        try:
            assert (mnt / "note.txt").read_text() == "version one\n"
        finally:
            run("umount", str(mnt))
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)

    # Replacing the disks of a running VM (its image is attached and mounted) is refused.
    third = _restore(site, item_id, point_id, conflict="overwrite")
    assert third["status"] == "Failed" and third["error"]["code"] == "UserErrorVmNotShutDown", third
