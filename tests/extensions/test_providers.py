"""Snapshot providers on real file systems: reflink on XFS, btrfs subvolumes, qcow2 overlays,
LVM (skipped without device-mapper), and the coded error when none fits."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kluis.agent.extensions.snapshot import ConfigMachine, DiskRef, QuiesceConfig, quiesced
from kluis.agent.extensions.snapshot.providers import (
    NO_DEVICE_MAPPER,
    BtrfsSubvolumeProvider,
    LvmClassicProvider,
    LvmThinProvider,
    Qcow2OverlayProvider,
    ReflinkProvider,
    choose_provider,
    device_mapper_missing,
    new_snapshot_id,
)
from kluis.agent.extensions.snapshot.providers.lvm import parse_thin_delta
from kluis.catalog import KluisError
from tests.extensions.conftest import Guest
from tests.extensions.helpers import Mounts, run

BLOCK = 4096


def _raw_image(path: Path, mib: int = 32) -> Path:
    """An image file with data in every block (so that nothing is a hole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(1024 * 1024)
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def _poke(path: Path, offsets: list[int]) -> set[int]:
    """Write a few bytes at each offset; the 4 KiB block numbers touched."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for off in offsets:
            os.pwrite(fd, os.urandom(100), off)
        os.fsync(fd)
    finally:
        os.close(fd)
    return {off // BLOCK for off in offsets} | {(off + 99) // BLOCK for off in offsets}


def _blocks(ranges: list[tuple[int, int]] | None) -> set[int]:
    assert ranges is not None
    out: set[int] = set()
    for off, length in ranges:
        out.update(range(off // BLOCK, (off + length + BLOCK - 1) // BLOCK))
    return out


def _differing_blocks(a: str, b: str) -> set[int]:
    """The truth: 4 KiB blocks whose bytes differ between two files."""
    out: set[int] = set()
    with open(a, "rb") as fa, open(b, "rb") as fb:
        i = 0
        while True:
            x, y = fa.read(BLOCK), fb.read(BLOCK)
            if not x and not y:
                return out
            if x != y:
                out.add(i)
            i += 1


def test_reflink_snapshot_and_fiemap_changed_extents_are_exact(xfs_host: Path) -> None:
    image = _raw_image(xfs_host / "vm" / "data.img")
    disks = [DiskRef("data", str(image))]
    provider = choose_provider(disks)
    assert isinstance(provider, ReflinkProvider)
    first = provider.create(disks, new_snapshot_id())
    written = _poke(image, [0, 5 * BLOCK + 10, 1000 * BLOCK, 4000 * BLOCK - 50, 8191 * BLOCK])
    second = provider.create(disks, new_snapshot_id())
    try:
        copy = second.disk("data").read_path
        assert Path(copy).parent.name == ".kluis-snapshots"
        assert os.stat(copy).st_mode & 0o777 == 0o400
        changed = second.changed_extents(first, "data")
        assert _blocks(changed) == written
        assert _differing_blocks(first.disk("data").read_path, copy) <= written
        # Unchanged since the last copy: nothing to read.
        third = provider.create(disks, new_snapshot_id())
        assert third.changed_extents(second, "data") == []
        third.delete()
    finally:
        first.delete()
        second.delete()
    assert not os.listdir(image.parent / ".kluis-snapshots")


def test_reflink_of_the_running_guest_covers_every_changed_block(guest: Guest) -> None:
    disks = [DiskRef("root", str(guest.image))]
    provider = ReflinkProvider()
    (guest.mountpoint / "a").write_bytes(os.urandom(3 * 1024 * 1024))
    with quiesced(QuiesceConfig(safe_freeze_wait_seconds=10), [str(guest.mountpoint)]):
        first = provider.create(disks, new_snapshot_id())
    try:
        (guest.mountpoint / "b").write_bytes(os.urandom(256 * 1024))
        with open(guest.mountpoint / "a", "r+b") as fh:
            fh.seek(1024 * 1024)
            fh.write(os.urandom(8192))
        with quiesced(QuiesceConfig(safe_freeze_wait_seconds=10), [str(guest.mountpoint)]):
            second = provider.create(disks, new_snapshot_id())
        try:
            truth = _differing_blocks(first.disk("root").read_path, second.disk("root").read_path)
            changed = _blocks(second.changed_extents(first, "root"))
            assert truth, "the writes must have reached the image"
            assert truth <= changed
            image_blocks = os.stat(guest.image).st_size // BLOCK
            assert len(changed) < image_blocks // 10, "only the changed region, not the whole disk"
        finally:
            second.delete()
    finally:
        first.delete()


def test_btrfs_read_only_subvolume_snapshot(btrfs_host: Path) -> None:
    run("btrfs", "subvolume", "create", str(btrfs_host / "vms"))
    image = _raw_image(btrfs_host / "vms" / "web" / "root.img", mib=16)
    other = _raw_image(btrfs_host / "vms" / "web" / "data.img", mib=4)
    disks = [DiskRef("root", str(image)), DiskRef("data", str(other))]
    provider = choose_provider(disks)
    assert isinstance(provider, BtrfsSubvolumeProvider)
    first = provider.create(disks, new_snapshot_id())
    try:
        subvol = first.data["subvolume"]
        props = run("btrfs", "property", "get", "-ts", subvol, "ro")
        assert "ro=true" in props
        with pytest.raises(OSError) as exc:
            open(first.disk("root").read_path, "r+b")  # noqa: SIM115
        assert exc.value.errno == errno.EROFS
        written = _poke(image, [3 * BLOCK, 2048 * BLOCK + 7, 4095 * BLOCK])
        second = provider.create(disks, new_snapshot_id())
        try:
            assert _differing_blocks(first.disk("root").read_path, second.disk("root").read_path) == written
            assert _blocks(second.changed_extents(first, "root")) == written
            assert second.changed_extents(first, "data") == []
        finally:
            second.delete()
    finally:
        first.delete()
    assert not os.path.exists(subvol)


def _qemu(*argv: str) -> str:
    if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
        pytest.skip("qemu-utils is not installed")
    return run(*argv)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_qcow2_overlay_freezes_the_base_and_merges_back(ext4_host: Path) -> None:
    base = ext4_host / "vm" / "disk.qcow2"
    base.parent.mkdir()
    _qemu("qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M")
    _qemu("qemu-io", "-c", "write -P 0xaa 0 64k", str(base))
    config = ext4_host / "vm.toml"
    config.write_text(f'[vm]\nname = "vm1"\n\n[[disks]]\nname = "root"\npath = "{base}"\nformat = "qcow2"\n')
    machine = ConfigMachine(config)
    disks = machine.list_disks()
    # On ext4 there is no reflink: the overlay is the method.
    provider = choose_provider(disks, switcher=machine)
    assert isinstance(provider, Qcow2OverlayProvider)
    snap = provider.create(disks, new_snapshot_id())
    overlay = Path(snap.disk("root").data["overlay"])
    assert machine.list_disks()[0].path == str(overlay)
    assert snap.disk("root").read_path == str(base)
    before = _sha(base)
    _qemu("qemu-io", "-c", "write -P 0xbb 0 4k", str(overlay))  # the VM writes on
    assert _sha(base) == before, "the base must not change while it is read"
    provider.delete(snap)
    assert not overlay.exists()
    assert machine.list_disks()[0].path == str(base)
    _qemu("qemu-io", "-c", "read -P 0xbb 0 4k", "-c", "read -P 0xaa 4k 60k", str(base))


def test_no_provider_fits_names_what_is_missing(ext4_host: Path, guest: Guest) -> None:
    raw = _raw_image(ext4_host / "vm" / "raw.img", mib=1)
    with pytest.raises(KluisError) as exc:
        choose_provider([DiskRef("root", str(raw))])
    err = exc.value
    assert err.code == "SnapshotProviderUnavailable"
    assert "cannot make reflink copies" in err.message and "not a qcow2 image" in err.message
    assert "is on ext4, not btrfs" in err.message
    # A block device that is no LVM volume (and here LVM cannot run at all).
    with pytest.raises(KluisError) as exc:
        choose_provider([DiskRef("root", guest.device, "block")])
    assert exc.value.code == "SnapshotProviderUnavailable"
    expected = device_mapper_missing() or "is not an LVM logical volume"
    assert expected in exc.value.message


def test_thin_delta_output_is_read_as_byte_ranges() -> None:
    xml = (
        '<superblock uuid="" time="1" transaction="3" data_block_size="128" nr_data_blocks="1024">'
        '<diff left="1" right="2"><same begin="0" length="4"/><different begin="4" length="2"/>'
        '<right_only begin="6" length="1"/><same begin="7" length="10"/><left_only begin="20" length="1"/>'
        "</diff></superblock>"
    )
    unit = 128 * 512
    assert parse_thin_delta(xml) == [(4 * unit, 3 * unit), (20 * unit, unit)]


@pytest.fixture
def lvm_volume_group(tmp_path: Path, mounts: Mounts) -> str:
    missing = device_mapper_missing()
    if missing:
        pytest.skip(missing)
    if shutil.which("lvcreate") is None:
        pytest.skip("lvm2 is not installed")
    image = tmp_path / "pv.img"
    with open(image, "wb") as fh:
        fh.truncate(256 * 1024 * 1024)
    dev = mounts.loop(image)
    vg = f"kluistest{os.getpid()}"
    run("pvcreate", "-q", dev)
    run("vgcreate", "-q", vg, dev)
    return vg


def test_lvm_classic_and_thin_snapshots(lvm_volume_group: str) -> None:
    vg = lvm_volume_group
    try:
        run("lvcreate", "-q", "-L", "32m", "-n", "plain", vg)
        run("lvcreate", "-q", "-L", "64m", "-T", f"{vg}/pool")
        run("lvcreate", "-q", "-V", "32m", "-T", f"{vg}/pool", "-n", "thin")
        plain = [DiskRef("d", f"/dev/{vg}/plain", "block")]
        thin = [DiskRef("d", f"/dev/{vg}/thin", "block")]
        assert isinstance(choose_provider(plain), LvmClassicProvider)
        assert isinstance(choose_provider(thin), LvmThinProvider)
        snap = LvmClassicProvider(cow_minimum=8 << 20).create(plain, new_snapshot_id())
        assert os.path.exists(snap.disk("d").read_path)
        snap.delete()
        first = LvmThinProvider().create(thin, new_snapshot_id())
        written = _poke(Path(f"/dev/{vg}/thin"), [0, 1024 * BLOCK])
        second = LvmThinProvider().create(thin, new_snapshot_id())
        assert written <= _blocks(second.changed_extents(first, "d"))
        second.delete()
        first.delete()
    finally:
        subprocess.run(["vgremove", "-fy", vg], capture_output=True, check=False)


def test_lvm_reason_without_device_mapper() -> None:
    if device_mapper_missing() is None:
        pytest.skip("this kernel has device-mapper")
    assert device_mapper_missing() == NO_DEVICE_MAPPER == "no device-mapper in this kernel"
    assert LvmThinProvider().unusable_reason([DiskRef("d", "/dev/null", "block")]) == NO_DEVICE_MAPPER
