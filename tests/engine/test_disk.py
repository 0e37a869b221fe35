"""Disk-image backup and restore, end to end on real image files and loop devices."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kluis.catalog import KluisError
from kluis.engine.blockmap import (
    ZERO_ID,
    DiskMap,
    decode_entries,
    decode_segment,
    encode_entries,
    find_disk,
)
from kluis.engine.disk import DiskBackup, DiskImageReader, DiskRestore, DiskSource
from kluis.engine.disk_restore import load_segment
from kluis.engine.format import BLOB_OVERHEAD, ID_SIZE, pack_name
from kluis.engine.repository import Repository
from kluis.engine.verify import Verifier
from tests.engine.helpers import new_repo, reopen

os.environ.setdefault("KLUIS_FAST_KDF", "1")

BS = 16 * 1024
SEG = 64  # entries per map segment: several segments even for small test images
MIB = 1024 * 1024


def make_image(path: Path, seed: int = 1, size: int = 8 * MIB + 12345) -> bytes:
    """An image with random data, written zeros, a hole, compressible text and a short tail block."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.write(rng.randbytes(MIB))
        f.write(bytes(MIB))  # explicit zeros: stored as zero entries, not as blobs
        # 2..4 MiB stays a hole
        f.seek(4 * MIB + 100)
        f.write(rng.randbytes(MIB))
        f.seek(6 * MIB)
        f.write(b"the quick brown fox jumps over the lazy disk\n" * 20000)
        f.truncate(size)
        f.seek(size - 5000)
        f.write(rng.randbytes(5000))
    assert os.path.getsize(path) == size
    return path.read_bytes()


def backup(repo: Repository, src: Path, **kw: object) -> DiskBackup:
    return DiskBackup(repo, src, name=kw.pop("name", "sda"), block_size=BS, segment_entries=SEG, **kw)  # type: ignore[arg-type]


def pack_bytes(repo_dir: Path) -> int:
    return sum(p.stat().st_size for p in (repo_dir / "data").rglob("*") if p.is_file())


def block_ids(repo: Repository, point: str, disk: str = "sda") -> list[bytes]:
    _h, manifest = repo.load_point(point)
    dmap = find_disk(point, manifest, disk)
    raw = b"".join(load_segment(repo, point, dmap, i) for i in range(len(dmap.segments)))
    return [raw[i : i + ID_SIZE] for i in range(0, len(raw), ID_SIZE)]


def rewrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "disk.img"
    return path, make_image(path)


def test_full_backup_restores_identical_and_sparse(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, content = image
    repo = new_repo(tmp_path / "repo")
    seen: list[tuple[int, int | None]] = []
    result = backup(repo, path, progress=lambda p: seen.append((p.bytes, p.total_bytes))).run()
    blocks = -(-len(content) // BS)
    assert result.size == len(content)
    assert seen[-1] == (len(content), len(content))
    json.dumps(result.as_dict())
    assert result.disks[0].blocks == blocks
    # 1 MiB of written zeros plus the 2 MiB hole (never read) are zero entries.
    assert result.blocks_zero >= 3 * MIB // BS
    assert result.blocks_read <= blocks - 2 * MIB // BS
    ids = block_ids(repo, result.point_id)
    assert len(ids) == blocks
    assert all(i == ZERO_ID for i in ids[MIB // BS : 4 * MIB // BS])

    out = tmp_path / "out" / "restored.img"
    restored: list[int] = []
    res = DiskRestore(
        reopen(repo), result.point_id, "sda", out, progress=lambda p: restored.append(p.bytes)
    ).run()
    assert restored[-1] == len(content)
    assert out.read_bytes() == content
    assert res.blocks_zero == result.blocks_zero
    # Zero blocks and holes are not allocated in the restored image.
    assert os.stat(out).st_blocks * 512 <= (blocks - result.blocks_zero) * BS + 64 * 1024
    assert not [p for p in out.parent.iterdir() if p.name != "restored.img"]


def test_mostly_zero_image_restores_sparse(tmp_path: Path) -> None:
    path = tmp_path / "big.img"
    with open(path, "wb") as f:
        f.write(bytes(32 * MIB))  # fully allocated zeros
        f.seek(17 * MIB + 3)
        f.write(b"x" * 50_000)
    repo = new_repo(tmp_path / "repo")
    result = backup(repo, path).run()
    assert result.blocks_stored <= 5
    out = tmp_path / "restored.img"
    DiskRestore(repo, result.point_id, "sda", out).run()
    assert out.read_bytes() == path.read_bytes()
    assert os.stat(out).st_blocks * 512 <= 128 * 1024


def test_incremental_stores_only_changed_blocks(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    repo_dir = tmp_path / "repo"
    repo = new_repo(repo_dir)
    first = backup(repo, path).run()
    before = pack_bytes(repo_dir)
    rng = random.Random(7)
    changed_blocks = [3, 300, 470]  # in different segments
    for b in changed_blocks:
        rewrite(path, b * BS + 100, rng.randbytes(BS - 200))
    second = backup(repo, path, previous_point=first.point_id).run()
    assert second.blocks_stored == len(changed_blocks)
    assert second.bytes_new == len(changed_blocks) * BS
    # Random blocks do not compress: each costs its bytes plus nonce and tag.
    assert second.stored_bytes - second.map_stored_bytes == len(changed_blocks) * (BS + BLOB_OVERHEAD)
    assert second.disks[0].segments_stored == len(changed_blocks)
    added = pack_bytes(repo_dir) - before
    assert added <= len(changed_blocks) * (BS + SEG * ID_SIZE + 2 * 1024) + 16 * 1024
    old, new = block_ids(repo, first.point_id), block_ids(repo, second.point_id)
    assert [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b] == changed_blocks
    out = tmp_path / "restored.img"
    DiskRestore(repo, second.point_id, "sda", out).run()
    assert out.read_bytes() == path.read_bytes()


def test_unchanged_second_backup_stores_nothing(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    repo_dir = tmp_path / "repo"
    repo = new_repo(repo_dir)
    first = backup(repo, path).run()
    packs = sorted(p.name for p in (repo_dir / "data").rglob("*") if p.is_file())
    second = backup(reopen(repo), path, previous_point=first.point_id).run()
    assert (second.blocks_stored, second.stored_bytes, second.map_stored_bytes) == (0, 0, 0)
    assert second.disks[0].segments_stored == 0
    assert sorted(p.name for p in (repo_dir / "data").rglob("*") if p.is_file()) == packs
    _h, m1 = repo.load_point(first.point_id)
    _h, m2 = repo.load_point(second.point_id)
    assert m1["disks"][0]["segments"] == m2["disks"][0]["segments"]


def test_changed_extents_read_only_those_blocks(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    repo = new_repo(tmp_path / "repo")
    first = backup(repo, path).run()
    original = path.read_bytes()
    told, untold = 10 * BS + 7, 400 * BS
    rewrite(path, told, b"told" * 1000)
    # A change the provider does not report: not reading it proves only the extents were read.
    rewrite(path, untold, b"untold" * 1000)
    extents = [(told, 4000), (2 * MIB + 5, 0)]  # a zero-length extent touches nothing
    result = backup(repo, path, previous_point=first.point_id, changed_extents=extents).run()
    assert result.blocks_read == 1
    assert result.bytes_read == BS
    assert result.blocks_stored == 1
    assert result.blocks_copied == first.disks[0].blocks - first.blocks_zero - 1
    expected = bytearray(original)
    expected[told : told + 4000] = b"told" * 1000
    out = tmp_path / "restored.img"
    DiskRestore(repo, result.point_id, "sda", out).run()
    assert out.read_bytes() == bytes(expected)


def test_changed_extents_with_a_grown_disk_read_the_new_tail(tmp_path: Path) -> None:
    path = tmp_path / "grow.img"
    make_image(path, seed=3, size=4 * MIB + 1000)  # last block short
    repo = new_repo(tmp_path / "repo")
    first = backup(repo, path).run()
    with open(path, "ab") as f:
        f.write(random.Random(9).randbytes(3 * MIB))
    result = backup(repo, path, previous_point=first.point_id, changed_extents=[]).run()
    # The short old tail block and everything after it are read; the rest is copied.
    assert result.blocks_read == -(-os.path.getsize(path) // BS) - (4 * MIB + 1000) // BS
    out = tmp_path / "restored.img"
    DiskRestore(repo, result.point_id, "sda", out).run()
    assert out.read_bytes() == path.read_bytes()


def test_reader_random_access(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, content = image
    repo = new_repo(tmp_path / "repo")
    point = backup(repo, path).run().point_id
    reader = DiskImageReader(reopen(repo), point, "sda", cached_blocks=4)
    assert reader.size == len(content)
    rng = random.Random(5)
    for _ in range(300):
        offset = rng.randrange(len(content) + 100)
        length = rng.choice([1, 511, BS, 3 * BS + 17, rng.randrange(200_000)])
        assert reader.read(offset, length) == content[offset : offset + length]
    assert reader.read(len(content), 10) == b""
    with pytest.raises(KluisError) as err:
        reader.read(-1, 10)
    assert err.value.code == "ValidationFailed"


def test_multiple_disks_in_one_point(tmp_path: Path) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    ca = make_image(a, seed=11)
    cb = make_image(b, seed=12, size=3 * MIB + 512)
    repo = new_repo(tmp_path / "repo")
    result = DiskBackup(
        repo, [("sda", a), DiskSource("sdb", str(b))], block_size=BS, segment_entries=SEG
    ).run()
    assert [d.name for d in result.disks] == ["sda", "sdb"]
    header, manifest = repo.load_point(result.point_id)
    assert header["kind"] == "disk" and header["disks"] == 2
    assert [d["name"] for d in manifest["disks"]] == ["sda", "sdb"]
    for name, content in (("sda", ca), ("sdb", cb)):
        out = tmp_path / f"{name}.out"
        DiskRestore(repo, result.point_id, name, out).run()
        assert out.read_bytes() == content
    with pytest.raises(KluisError) as err:
        DiskRestore(repo, result.point_id, "sdc", tmp_path / "x").run()
    assert err.value.code == "DiskNotInPoint"
    with pytest.raises(KluisError) as err:
        DiskBackup(repo, [("sda", a), ("sda", b)])
    assert err.value.code == "ValidationFailed"
    assert Verifier(repo, read_data=True).run().ok


def test_corrupted_block_fails_restore_with_catalog_error(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    repo_dir = tmp_path / "repo"
    repo = new_repo(repo_dir)
    point = backup(repo, path).run().point_id
    victim = block_ids(repo, point)[5]
    entry = repo.index.get(victim)
    assert entry is not None
    pack = repo_dir / pack_name(entry.pack)
    data = bytearray(pack.read_bytes())
    data[entry.offset + 40] ^= 0x01
    pack.write_bytes(bytes(data))

    fresh = reopen(repo)
    out = tmp_path / "out" / "restored.img"
    with pytest.raises(KluisError) as err:
        DiskRestore(fresh, point, "sda", out).run()
    assert err.value.code == "RepoBlobCorrupt"
    assert not out.exists()
    assert not list(out.parent.iterdir())  # the partial image was removed
    with pytest.raises(KluisError) as err:
        DiskImageReader(reopen(repo), point, "sda").read(5 * BS, 10)
    assert err.value.code == "RepoBlobCorrupt"
    report = Verifier(reopen(repo), read_data=True).run()
    assert not report.ok
    assert report.affected == {point: ["(disk sda)"]}


def test_verify_walks_disk_maps(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    repo_dir = tmp_path / "repo"
    repo = new_repo(repo_dir)
    first = backup(repo, path).run().point_id
    second = backup(repo, path, previous_point=first).run().point_id
    assert Verifier(reopen(repo)).run().ok
    # A segment that decrypts but is not a block map is reported as such.
    _h, manifest = repo.load_point(second)
    dmap = DiskMap.from_manifest(second, manifest["disks"][0])
    with pytest.raises(KluisError) as err:
        decode_segment(b"garbage" * 10, where="test", expected=SEG)
    assert err.value.code == "DiskBlockMapCorrupt"
    # Drop the index entries of one segment's blocks: verify names them as missing, per point.
    seg_raw = load_segment(repo, second, dmap, 0)  # the first MiB: random data
    fresh = reopen(repo)
    lost = {seg_raw[i : i + ID_SIZE] for i in range(0, len(seg_raw), ID_SIZE)} - {ZERO_ID}
    assert len(lost) == SEG
    for blob in lost:
        fresh.index._entries.pop(blob)
    fresh.index.load = lambda *a, **k: 0  # type: ignore[method-assign]  # keep the damaged in-memory index
    report = Verifier(fresh).run()
    codes = {p["code"] for p in report.problems}
    assert codes == {"RepoBlobMissing"}
    assert set(report.affected) == {first, second}


def test_cancel_commits_nothing(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    repo = new_repo(tmp_path / "repo")
    calls = iter(range(1000))
    with pytest.raises(KluisError) as err:
        backup(repo, path, should_stop=lambda: next(calls) > 3).run()
    assert err.value.code == "OperationCancelled"
    assert repo.list_points() == []
    point = backup(repo, path).run().point_id
    out = tmp_path / "out" / "restored.img"
    with pytest.raises(KluisError) as err:
        DiskRestore(repo, point, "sda", out, should_stop=lambda: True).run()
    assert err.value.code == "OperationCancelled"
    assert list(out.parent.iterdir()) == []


def test_source_errors_are_catalog_errors(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    for src in (tmp_path / "missing.img", tmp_path):
        with pytest.raises(KluisError) as err:
            DiskBackup(repo, src, name="sda").run()
        assert err.value.code == "DiskSourceUnreadable"
    with pytest.raises(KluisError) as err:
        DiskBackup(repo, tmp_path / "x", name="sda", block_size=3000)
    assert err.value.code == "ValidationFailed"


# -- loop devices -----------------------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[list[str]]:
    if not os.path.exists("/dev/loop-control") or shutil.which("losetup") is None:
        pytest.skip("no loop device support on this kernel (/dev/loop-control missing)")
    devices: list[str] = []
    try:
        yield devices
    finally:
        for dev in devices:
            subprocess.run(["losetup", "-d", dev], check=False)


def attach(loop: list[str], path: Path) -> str:
    dev = subprocess.run(
        ["losetup", "-f", "--show", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    loop.append(dev)
    return dev


def test_loop_device_source_and_target(tmp_path: Path, loop: list[str]) -> None:
    src = tmp_path / "src.img"
    content = make_image(src, seed=21, size=6 * MIB)  # loop devices have whole 512-byte sectors
    dev = attach(loop, src)
    repo = new_repo(tmp_path / "repo")
    result = DiskBackup(repo, dev, name="vda", block_size=BS, segment_entries=SEG).run()
    assert result.size == len(content)
    out = tmp_path / "from-device.img"
    DiskRestore(repo, result.point_id, "vda", out).run()
    assert out.read_bytes() == content

    # Restore onto a device full of garbage: zero blocks must come back as zeros.
    target = tmp_path / "target.img"
    target.write_bytes(random.Random(3).randbytes(7 * MIB))
    tdev = attach(loop, target)
    res = DiskRestore(repo, result.point_id, "vda", tdev).run()
    assert res.device
    with open(tdev, "rb") as f:
        assert f.read(len(content)) == content

    small = tmp_path / "small.img"
    small.write_bytes(bytes(MIB))
    sdev = attach(loop, small)
    with pytest.raises(KluisError) as err:
        DiskRestore(repo, result.point_id, "vda", sdev).run()
    assert err.value.code == "DiskRestoreTargetTooSmall"


# -- block map encoding -----------------------------------------------------------------------

_ids = st.one_of(st.none(), st.binary(min_size=ID_SIZE, max_size=ID_SIZE).filter(lambda b: b != ZERO_ID))


@settings(max_examples=200, deadline=None)
@given(st.lists(_ids, max_size=300))
def test_blockmap_segment_round_trip(entries: list[bytes | None]) -> None:
    encoded = encode_entries(entries)
    assert decode_entries(encoded) == entries
    assert decode_segment(encoded, where="t", expected=len(entries)) == b"".join(
        e or ZERO_ID for e in entries
    )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_blockmap_garbage_gives_catalog_error(data: bytes) -> None:
    try:
        decode_entries(data)
    except KluisError as exc:
        assert exc.code == "DiskBlockMapCorrupt"


@settings(max_examples=100, deadline=None)
@given(st.lists(_ids, min_size=1, max_size=50), st.integers(min_value=0, max_value=2000))
def test_blockmap_count_mismatch_is_refused(entries: list[bytes | None], cut: int) -> None:
    encoded = encode_entries(entries)
    damaged = encoded[: cut % len(encoded)] if cut % 2 else encoded + b"\x01"
    with pytest.raises(KluisError):
        decode_segment(damaged, where="t", expected=len(entries))
