"""Disk restore jobs: instant restore from the kept snapshot, restore from the vault, replace refused.

Runs after test_disk_backup.py (same module-scoped site is not shared across modules, so
this module makes its own backups).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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


MIB = 1024 * 1024


def _ext4_image(path: Path, files: dict[str, str], size_mib: int = 32) -> str:
    """A (re)made ext4 image holding ``files``, populated without mounting; its digest."""
    src = path.with_name(path.name + ".src")
    shutil.rmtree(src, ignore_errors=True)
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    with open(path, "wb") as fh:
        fh.truncate(size_mib * MIB)
    run("mkfs.ext4", "-q", "-F", "-d", str(src), str(path))
    shutil.rmtree(src)
    return _digest(path)


def _device_digest(device: str, length: int) -> str:
    h = hashlib.sha256()
    with open(device, "rb") as fh:
        left = length
        while left:
            chunk = fh.read(min(left, 1 << 20))
            assert chunk, "device shorter than expected"
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _stopped_vm(site: Site, name: str) -> tuple[str, Path, str, str]:
    """A VM whose image is attached nowhere (stopped), protected and backed up once.

    Returns (item id, image path, point id, digest of the image at the backup).
    """
    image = site.host / name / "disk.img"
    image.parent.mkdir(exist_ok=True)
    digest = _ext4_image(image, {"state.txt": "as backed up\n"})
    made = site.cli("protect", "disks", str(image), "--name", name, "--policy", "vms", "--json")
    assert made.rc == 0, made.stdout + made.stderr
    done = site.backup(made.json["id"])
    assert done["status"] == "Completed", done
    return made.json["id"], image, done["result"]["point_id"], digest


def _drop_local_snapshot(site: Site, item_id: str, point_id: str) -> None:
    """Delete the kept snapshot file of ``point_id`` so a restore has to use the vault."""
    for p in _kept(site, item_id):
        if p.get("recovery_point") == point_id:
            for d in p["snapshot"]["disks"]:
                os.chmod(d["read_path"], 0o600)
                os.unlink(d["read_path"])


def test_replace_disks_of_a_stopped_vm(site: Site) -> None:
    item_id, image, point_id, at_backup = _stopped_vm(site, "vm-stopped")
    # The guest changed after the backup.
    after = _ext4_image(image, {"state.txt": "changed after the backup\n", "new.txt": "new\n"})
    assert after != at_backup

    # Stopped (its image is attached to no loop device): the disks are replaced, from the
    # snapshot still kept on this host, after a safety snapshot of what is overwritten.
    first = _restore(site, item_id, point_id, conflict="overwrite")
    assert first["status"] == "Completed", first
    stats = first["result"]["stats"]
    assert stats["replaced"] is True and stats["instant"] is True, stats
    assert _digest(image) == at_backup
    safety = [p for p in _kept(site, item_id) if p["snapshot"]["id"] == stats["snapshot_before_replace"]]
    assert len(safety) == 1 and safety[0]["recovery_point"] is None, _kept(site, item_id)
    assert _digest(Path(safety[0]["snapshot"]["disks"][0]["read_path"])) == after

    # Without the local snapshot the replacement comes from the vault, byte for byte the same.
    _ext4_image(image, {"state.txt": "changed again\n"})
    _drop_local_snapshot(site, item_id, point_id)
    second = _restore(site, item_id, point_id, conflict="overwrite")
    assert second["status"] == "Completed", second
    s2 = second["result"]["stats"]
    assert s2["replaced"] is True and s2["instant"] is False and s2["source"] == "vault", s2
    assert _digest(image) == at_backup
    assert s2["snapshot_before_replace"] != stats["snapshot_before_replace"]

    # Started again (its image attached to a loop device): refused, and the image is untouched.
    dev = run("losetup", "-f", "--show", str(image)).strip()
    try:
        third = _restore(site, item_id, point_id, conflict="overwrite")
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    assert third["status"] == "Failed" and third["error"]["code"] == "UserErrorVmNotShutDown", third
    assert _digest(image) == at_backup


def _blank_loop(site: Site, name: str, size_mib: int) -> str:
    backing = site.workdir / f"{name}.dev"
    with open(backing, "wb") as fh:
        fh.truncate(size_mib * MIB)
    return site.mounts.loop(backing)


def test_restore_to_block_devices(site: Site) -> None:
    item_id, image, point_id, at_backup = _stopped_vm(site, "vm-dev")
    size = image.stat().st_size
    big = _blank_loop(site, "big", 48)
    small = _blank_loop(site, "small", 16)
    busy = _blank_loop(site, "busy", 48)
    run("mkfs.ext4", "-q", "-F", busy)
    site.mounts.mount(busy, site.workdir / "busy-mnt")

    def restore_to(device: str) -> dict[str, Any]:
        return _restore(site, item_id, point_id, target_path=device)

    for source in ("local snapshot", "vault"):
        if source == "vault":
            _drop_local_snapshot(site, item_id, point_id)
            # Start from a device full of other bytes, so every block has to be written.
            with open(big, "r+b") as fh:
                fh.write(os.urandom(48 * MIB))
        done = restore_to(big)
        assert done["status"] == "Completed", (source, done)
        stats = done["result"]["stats"]
        assert stats["source"] == source and stats["disks"][0]["target"] == big, stats
        assert _device_digest(big, size) == at_backup, source
        # A device smaller than the disk: nothing written, coded.
        too_small = restore_to(small)
        assert too_small["status"] == "Failed", (source, too_small)
        assert too_small["error"]["code"] == "DiskRestoreTargetTooSmall", (source, too_small)
        with open(small, "rb") as fh:
            assert fh.read(MIB) == bytes(MIB), source
        # A mounted device is claimed: refused (EBUSY), the mounted file system untouched.
        claimed = restore_to(busy)
        assert claimed["status"] == "Failed", (source, claimed)
        assert claimed["error"]["code"] == "RestoreTargetInvalid", (source, claimed)
        assert os.path.ismount(site.workdir / "busy-mnt")
        run("umount", str(site.workdir / "busy-mnt"))
        run("fsck.ext4", "-n", busy)
        site.mounts.mount(busy, site.workdir / "busy-mnt")
