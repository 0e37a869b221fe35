"""Disk backups whose snapshot step fails, made for real with a running vault and agent.

- SnapshotProviderFailed (reflink): the VM's image lives on an XFS file system that
  can reflink, but its ``.kluis-snapshots`` folder is another XFS file system mounted
  there. The provider's probe inside that folder works; cloning the image across two
  file systems fails with EXDEV.
- SnapshotProviderFailed (qcow2 overlay): the folder holding a qcow2 image on ext4 is
  immutable (``chattr +i``), so ``qemu-img create`` cannot put the overlay beside it.
- BackUpOperationFailed: the agent's repository cache folder (where the pack journal
  notes each pack before its upload) is immutable, an error the transfer does not
  expect: it is tried twice, then the job fails with a reference to the agent's log.
  With the folder writable again the same item backs up.
- SnapshotSpaceInsufficient: a volume group too small for a classic LVM snapshot's
  copy-on-write space (skipped without device-mapper or lvm2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kluis.agent.extensions.snapshot import DiskRef
from kluis.agent.extensions.snapshot.providers import (
    LvmClassicProvider,
    device_mapper_missing,
    new_snapshot_id,
)
from kluis.agent.scratch import Layout
from kluis.catalog import KluisError
from tests.agent.helpers import AgentProc, VaultServer, base_env, kluis
from tests.extensions.helpers import Mounts, run

TOOLS = ("losetup", "mkfs.xfs", "mkfs.ext4", "mount", "umount", "chattr", "qemu-img")


@dataclass
class Host:
    """The module's vault, agent and host file systems."""

    vault: VaultServer
    agent: AgentProc
    mounts: Mounts
    workdir: Path
    policy: str

    def filesystem(self, name: str, fstype: str, size_mib: int, where: Path | None = None) -> Path:
        """A fresh file system on a loop device, mounted at ``where`` (default workdir/name)."""
        image = self.workdir / f"{name}.img"
        with open(image, "wb") as fh:
            fh.truncate(size_mib * 1024 * 1024)
        if fstype == "xfs":
            run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
        else:
            run("mkfs.ext4", "-q", "-F", str(image))
        return self.mounts.mount(self.mounts.loop(image), where or self.workdir / name)

    def protect_and_back_up(self, image: Path, name: str) -> dict[str, Any]:
        """``kluis protect disks IMAGE`` on the agent's machine, then one backup, waited for."""
        return self.back_up(self.protect(image, name))

    def back_up(self, item: dict[str, Any]) -> dict[str, Any]:
        """One on-demand backup of ``item``, waited for."""
        job = self.vault.backup(item["id"])
        return self.vault.wait_job(job["id"], timeout=120)

    def protect(self, image: Path, name: str) -> dict[str, Any]:
        """``kluis protect disks IMAGE`` on the agent's machine; the item."""
        env = base_env()
        env.update(
            KLUIS_VAULT_URL=self.vault.url,
            KLUIS_TOKEN=self.vault.admin_token,
            KLUIS_AGENT_CONFIG_DIR=str(self.agent.config_dir),
        )
        made = kluis(
            "protect", "disks", str(image), "--policy", self.policy, "--name", name, "--json", env=env
        )
        assert made.rc == 0, made.stdout + made.stderr
        item: dict[str, Any] = made.json
        return item


@pytest.fixture(scope="module")
def host(vault: VaultServer, workdir: Path) -> Iterator[Host]:
    """A registered agent (daemon running) on a machine that may make loop devices and mounts."""
    if os.geteuid() != 0:
        pytest.skip("needs root: loop devices and mounts")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop device support in this kernel")
    agent = AgentProc(root=workdir / "vmhost", hostname="cond-vmhost", scratch=workdir / "vmhost" / "scratch")
    registered = agent.register(vault.credentials_file(workdir / "creds"))
    assert registered.rc == 0, registered.stdout + registered.stderr
    agent.tune(heartbeat_interval=1, poll_wait=5)
    mounts = Mounts()
    agent.start()
    try:
        yield Host(vault, agent, mounts, workdir, vault.policy("vms")["id"])
    finally:
        agent.stop()
        mounts.close()


def _image(path: Path, mib: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(mib * 1024 * 1024))
    return path


def test_reflink_snapshot_folder_on_another_file_system(host: Host) -> None:
    storage = host.filesystem("xfs-host", "xfs", 320)
    image = _image(storage / "vm-x" / "disk.img", 4)
    folder = storage / "vm-x" / ".kluis-snapshots"
    host.filesystem("xfs-snapshots", "xfs", 320, where=folder)
    job = host.protect_and_back_up(image, "vm-x")
    assert job["status"] == "Failed", job
    error = job["error"]
    assert error["code"] == "SnapshotProviderFailed", error
    assert error["params"]["provider"] == "reflink"
    assert error["params"]["device"] == str(image)
    assert error["params"]["reason"] == "FICLONE failed: Invalid cross-device link"
    assert not [p for p in folder.iterdir() if p.name.startswith("disk.img@")]  # no half copy left


def test_qcow2_overlay_cannot_be_created_beside_the_image(host: Host) -> None:
    storage = host.filesystem("ext4-host", "ext4", 48)
    vm = storage / "vm-q"
    vm.mkdir()
    image = vm / "disk.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(image), "8M")
    run("chattr", "+i", str(vm))
    try:
        job = host.protect_and_back_up(image, "vm-q")
    finally:
        subprocess.run(["chattr", "-i", str(vm)], check=False)
    assert job["status"] == "Failed", job
    error = job["error"]
    assert error["code"] == "SnapshotProviderFailed", error
    assert error["params"]["provider"] == "qcow2-overlay"
    assert error["params"]["device"] == str(image)
    reason = error["params"]["reason"]
    assert reason.startswith("qemu-img create -q exited with 1") and "Operation not permitted" in reason
    assert sorted(p.name for p in vm.iterdir()) == ["disk.qcow2"]  # no overlay left behind


def test_unexpected_error_during_the_transfer_fails_after_a_retry(host: Host) -> None:
    storage = host.filesystem("xfs-host-2", "xfs", 320)
    image = _image(storage / "vm-t" / "disk.img", 2)
    item = host.protect(image, "vm-t")
    cache = Layout(host.agent.scratch).cache(host.agent.machine_id())
    cache.mkdir(parents=True, exist_ok=True)
    frozen = [cache, *(p for p in cache.glob("unindexed-packs*") if p.is_file())]
    run("chattr", "+i", *map(str, frozen))
    try:
        job = host.back_up(item)
    finally:
        subprocess.run(["chattr", "-i", *map(str, frozen)], check=False)
    assert job["status"] == "Failed", job
    error = job["error"]
    assert error["code"] == "BackUpOperationFailed", error
    assert error["params"]["item"] == "vm-t" and error["params"]["attempts"] == 2
    reason = error["params"]["reason"]
    assert reason.startswith("internal error, reference "), reason
    # The reference leads to the traceback in the agent's log, which names the cause.
    reference = reason.rsplit(" ", 1)[1]
    log = host.agent.log.read_text()
    assert f"failed (attempt 2, {reference})" in log
    traceback = log.split(f"failed (attempt 2, {reference})", 1)[1]
    assert "PermissionError: [Errno 1] Operation not permitted" in traceback, traceback[-2000:]
    assert str(cache) in traceback
    again = host.back_up(item)
    assert again["status"] == "Completed", again


def test_volume_group_without_copy_on_write_space(workdir: Path) -> None:
    missing = device_mapper_missing()
    if missing:
        pytest.skip(missing)
    if shutil.which("lvcreate") is None:
        pytest.skip("lvm2 is not installed")
    image = workdir / "pv.img"
    with open(image, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    mounts = Mounts()
    vg = f"kluiscond{os.getpid()}"
    try:
        dev = mounts.loop(image)
        run("pvcreate", "-q", dev)
        run("vgcreate", "-q", vg, dev)
        run("lvcreate", "-q", "-l", "100%FREE", "-n", "data", vg)  # nothing left for copy-on-write
        disks = [DiskRef("d", f"/dev/{vg}/data", "block")]
        with pytest.raises(KluisError) as exc:
            LvmClassicProvider(cow_minimum=8 << 20).create(disks, new_snapshot_id())
    finally:
        subprocess.run(["vgremove", "-fy", vg], capture_output=True, check=False)
        mounts.close()
    err = exc.value
    assert err.code == "SnapshotSpaceInsufficient"
    assert err.params["device"] == f"/dev/{vg}/data" and err.params["pool"] == f"volume group {vg}"
    assert err.params["free"] == "0 bytes" and err.params["needed"] == f"{8 << 20} bytes"
