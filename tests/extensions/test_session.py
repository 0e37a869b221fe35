"""The whole path on the test VM: quiesce with scripts, reflink snapshot, instant point,
changed-extent incremental backup with the engine, byte-identical restore."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kluis.agent.extensions.snapshot import (
    ConfigMachine,
    Consistency,
    QuiesceConfig,
    RestorePointCollection,
    ScriptSpec,
    take_snapshot,
)
from kluis.catalog import KluisError
from kluis.engine.disk import DiskBackup, DiskRestore
from tests.engine.helpers import new_repo
from tests.extensions.conftest import Guest
from tests.extensions.helpers import Mounts, root_script, run, write_finishes

BS = 64 * 1024


def _vm_config(tmp_path: Path, guest: Guest, guest_agent: str = "local") -> ConfigMachine:
    config = tmp_path / "web-01.toml"
    config.write_text(
        f'[vm]\nname = "web-01"\nguest_agent = "{guest_agent}"\n\n'
        f'[[disks]]\nname = "root"\npath = "{guest.image}"\nformat = "raw"\n'
    )
    return ConfigMachine(config)


def _snapshots_on_disk(guest: Guest) -> list[str]:
    d = guest.image.parent / ".kluis-snapshots"
    return sorted(os.listdir(d)) if d.exists() else []


def test_vm_backup_incremental_and_restore(guest: Guest, tmp_path: Path, mounts: Mounts) -> None:
    log = tmp_path / "scripts.log"
    config = QuiesceConfig(
        pre=ScriptSpec(root_script(tmp_path / "pre.sh", f'echo "pre $KLUIS_ITEM" >> {log}')),
        post=ScriptSpec(root_script(tmp_path / "post.sh", f"echo post >> {log}")),
        safe_freeze_wait_seconds=10,
    )
    machine = _vm_config(tmp_path, guest)
    assert machine.is_running()
    points = RestorePointCollection("item-web-01", tmp_path / "points", machine="web-01")
    repo = new_repo(tmp_path / "repo")
    (guest.mountpoint / "data.bin").write_bytes(os.urandom(4 * 1024 * 1024))

    first = take_snapshot(machine, item="item-web-01", quiesce=config, collection=points, retention_days=2)
    assert first.consistency is Consistency.APPLICATION and first.kept and first.previous is None
    assert first.provider.name == "reflink" and log.read_text().split("\n")[:2] == ["pre item-web-01", "post"]
    assert write_finishes(guest.mountpoint / "thawed", within=5) is not None
    disk = first.snapshot.disk("root")
    consistency = str(first.consistency)
    full = DiskBackup(repo, disk.read_path, name="root", block_size=BS, consistency=consistency).run()
    points.set_recovery_point(first.snapshot.id, full.point_id)

    # The guest changes a little.
    with open(guest.mountpoint / "data.bin", "r+b") as fh:
        fh.seek(1024 * 1024)
        fh.write(os.urandom(100 * 1024))
    (guest.mountpoint / "new.txt").write_text("written after the first backup\n")

    second = take_snapshot(machine, item="item-web-01", quiesce=config, collection=points, retention_days=2)
    assert second.previous is not None and second.previous.id == first.snapshot.id
    changed = second.changed_extents("root")
    assert changed, "the provider knows what changed"
    size = os.stat(guest.image).st_size
    assert sum(length for _, length in changed) < size // 10
    copy = second.snapshot.disk("root").read_path
    incr = DiskBackup(
        repo, copy, name="root", block_size=BS, previous_point=full.point_id, changed_extents=changed
    ).run()
    assert incr.blocks_read < full.blocks_read // 5, "only blocks in changed extents are read"

    restored = tmp_path / "restored.img"
    DiskRestore(repo, incr.point_id, "root", restored).run()
    assert restored.read_bytes() == Path(copy).read_bytes()
    # The restored disk's file system holds the guest's files (mounted read-only).
    mnt = mounts.mount(mounts.loop(restored), tmp_path / "restored", "ro", "noload")
    assert (mnt / "new.txt").read_text() == "written after the first backup\n"
    assert (mnt / "data.bin").read_bytes() == (guest.mountpoint / "data.bin").read_bytes()
    assert len(points.points()) == 2 and len(_snapshots_on_disk(guest)) == 2


def test_guest_agent_none_stopped_vm_and_missing_disk(guest: Guest, tmp_path: Path, mounts: Mounts) -> None:
    machine = _vm_config(tmp_path, guest, guest_agent="none")
    with pytest.raises(KluisError) as exc:
        take_snapshot(machine, item="vm", quiesce=QuiesceConfig())
    assert exc.value.code == "VmGuestAgentUnavailable"
    assert _snapshots_on_disk(guest) == []

    result = take_snapshot(machine, item="vm", quiesce=QuiesceConfig(continue_on_failure=True))
    assert result.consistency is Consistency.CRASH
    assert [w.code for w in result.warnings] == ["VmGuestAgentUnavailable"]
    assert result.summary()["consistency"] == "crash"
    result.release()  # not kept: deleted after the transfer
    assert _snapshots_on_disk(guest) == []

    # Stopped: unmounted and detached. Nothing to quiesce; a crash-consistent point.
    run("umount", str(guest.mountpoint))
    run("losetup", "-d", guest.device)
    stopped = _vm_config(tmp_path, guest, guest_agent="local")
    assert not stopped.is_running()
    result = take_snapshot(stopped, item="vm")
    assert result.consistency is Consistency.CRASH and result.warnings == []
    result.release()

    guest.image.rename(guest.image.with_suffix(".moved"))
    with pytest.raises(KluisError) as exc:
        take_snapshot(stopped, item="vm")
    assert exc.value.code == "ProtectedMachineNotFound"
    assert "stop-protection" in exc.value.actions[0]


def test_failures_leave_no_snapshot_behind(guest: Guest, tmp_path: Path) -> None:
    machine = _vm_config(tmp_path, guest)
    points = RestorePointCollection("vm", tmp_path / "points", machine="web-01", limit=1)
    kept = take_snapshot(machine, item="vm", collection=points, retention_days=1)
    assert kept.kept and len(_snapshots_on_disk(guest)) == 1
    with pytest.raises(KluisError) as exc:
        take_snapshot(machine, item="vm", collection=points, retention_days=1)
    assert exc.value.code == "UserErrorRpCollectionLimitReached"
    assert len(_snapshots_on_disk(guest)) == 1

    # A post-script failing after the snapshot was taken: the snapshot is deleted again.
    failing_post = QuiesceConfig(post=ScriptSpec(root_script(tmp_path / "post.sh", "exit 4")))
    with pytest.raises(KluisError) as exc:
        take_snapshot(machine, item="vm", quiesce=failing_post)
    assert exc.value.code == "QuiesceScriptFailed" and exc.value.params["phase"] == "post"
    assert len(_snapshots_on_disk(guest)) == 1
    assert write_finishes(guest.mountpoint / "thawed", within=5) is not None


def test_host_machine_freezes_the_mounts_of_its_block_devices(guest: Guest) -> None:
    from kluis.agent.extensions.snapshot import DiskRef, HostMachine

    machine = HostMachine("host-1", [DiskRef("root", guest.device, "block")])
    with machine.quiesce(QuiesceConfig(safe_freeze_wait_seconds=10), item="host-1") as q:
        assert q.outcome.frozen_mounts == [os.path.realpath(guest.mountpoint)]
        assert write_finishes(guest.mountpoint / "blocked", within=0.3) is None
    assert q.outcome.consistency is Consistency.FILE_SYSTEM
    assert write_finishes(guest.mountpoint / "after", within=5) is not None
    # A plain block device has no snapshot method here; nothing stays frozen.
    with pytest.raises(KluisError) as exc:
        take_snapshot(machine, item="host-1")
    assert exc.value.code == "SnapshotProviderUnavailable"
    assert write_finishes(guest.mountpoint / "still-thawed", within=5) is not None


def test_vm_config_is_checked(tmp_path: Path) -> None:
    bad = {
        "no vm": '[[disks]]\nname = "a"\npath = "/x"\n',
        "bad agent": '[vm]\nname = "v"\nguest_agent = "ssh"\n[[disks]]\nname = "a"\npath = "/x"\n',
        "no disks": '[vm]\nname = "v"\n',
        "bad format": '[vm]\nname = "v"\n[[disks]]\nname = "a"\npath = "/x"\nformat = "vmdk"\n',
        "twice": '[vm]\nname = "v"\n[[disks]]\nname = "a"\npath = "/x"\n[[disks]]\nname = "a"\npath = "/y"\n',
        "not toml": "[vm\n",
    }
    for what, text in bad.items():
        path = tmp_path / "vm.toml"
        path.write_text(text)
        with pytest.raises(KluisError) as exc:
            ConfigMachine(path)
        assert exc.value.code == "VmConfigInvalid", what
