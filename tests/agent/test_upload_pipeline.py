"""The agent's background pack uploads: nothing that could name a pack runs before the pack is stored.

A real local store underneath; a subclass holds pack uploads at a gate (to see what waits
for them) or fails one (to see where the error comes out).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kluis.agent.store import UploadPipeline
from kluis.catalog import KluisError
from kluis.engine.packs import PACK_BUFFER_STEP, pack_buffer_size
from kluis.stores.local import LocalStore


class GatedStore(LocalStore):
    """Pack uploads wait for ``gate``; ``fail`` names a pack whose upload fails."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.fail: str | None = None
        self.started: list[str] = []
        self.seen_at_index: list[str] = []

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        if name.startswith("data/"):
            self.started.append(name)
            assert self.gate.wait(10)
            if name == self.fail:
                raise KluisError("StoreWriteFailed", name=name, store=self.url, reason="test")
        if name.startswith("index/"):
            self.seen_at_index = sorted(o.name for o in self.list("data/"))
        super().put(name, data)


def _pack(i: int) -> str:
    return f"data/{i:02x}/{i:02x}" + "0" * 62


def test_packs_upload_in_the_background_and_an_index_waits_for_them(tmp_path: Path) -> None:
    inner = GatedStore(tmp_path / "store")
    pipe = UploadPipeline(inner, threads=2, in_flight=3)
    buf = bytearray(b"x" * 1000)
    t0 = time.monotonic()
    for i in range(3):
        buf[:1] = bytes([i])
        pipe.put(_pack(i), buf)  # returns at once although the store is held
    # The caller's buffer was copied: changing it afterwards does not change the packs.
    buf[:1] = b"Z"
    index = "index/" + "a" * 64
    pipe.put(index, bytearray(b"index"))  # queued behind the packs: the caller goes on
    assert time.monotonic() - t0 < 2
    time.sleep(0.3)
    assert not inner.exists(index)  # not sent while the packs it may name are not stored

    done = threading.Event()

    def write_refs() -> None:
        pipe.put("refs/p1", b"refs")
        done.set()

    writer = threading.Thread(target=write_refs)
    writer.start()
    assert not done.wait(0.5)  # a reference list waits for packs and index alike
    inner.gate.set()
    writer.join(10)
    assert done.is_set()
    assert inner.seen_at_index == sorted(_pack(i) for i in range(3))
    assert inner.get(index) == b"index"
    assert [inner.get(_pack(i))[:1] for i in range(3)] == [b"\x00", b"\x01", b"\x02"]
    pipe.close()


def test_a_failed_upload_is_raised_before_anything_names_it(tmp_path: Path) -> None:
    inner = GatedStore(tmp_path / "store")
    inner.fail = _pack(1)
    pipe = UploadPipeline(inner, threads=1, in_flight=2)
    pipe.put(_pack(1), b"one")
    pipe.put("index/" + "b" * 64, b"index")  # queued while the pack is still on its way
    inner.gate.set()
    with pytest.raises(KluisError) as caught:
        pipe.put("refs/p1", b"refs")
    assert caught.value.code == "StoreWriteFailed"
    assert not inner.exists("index/" + "b" * 64)  # the index naming the lost pack stayed back
    assert not inner.exists("refs/p1")
    # Later packs and indexes are refused too: the backup stops instead of packing on.
    with pytest.raises(KluisError):
        pipe.put(_pack(2), b"two")
    with pytest.raises(KluisError):
        pipe.put("index/" + "c" * 64, b"index")
    pipe.close()  # closing after a failure does not raise again


def test_upload_buffers_are_reused_and_never_mix_packs(tmp_path: Path) -> None:
    inner = GatedStore(tmp_path / "store")
    inner.gate.set()
    pipe = UploadPipeline(inner, threads=2, in_flight=3)
    buf = bytearray(300_000)
    sizes = [300_000, 1_000, 250_000, 7, 300_000, 120_000, 299_999, 64, 200_000, 10]
    for i, size in enumerate(sizes):
        buf[:size] = bytes([i]) * size  # the caller reuses one buffer, as the pack writer does
        pipe.put(_pack(i), memoryview(buf)[:size])
    pipe.drain()
    for i, size in enumerate(sizes):
        assert inner.get(_pack(i)) == bytes([i]) * size
    # At most one buffer per upload slot is kept for the next packs.
    assert 1 <= len(pipe._free) <= 3
    pipe.close()


def test_one_upload_buffer_serves_packs_of_every_size(tmp_path: Path) -> None:
    """Packs of just over 16 to 20 MiB (the pack writer flushes past its target), each a
    little larger than the last, reuse one buffer.

    With buffers of the exact size each larger pack made a new one, whose pages were
    faulted in and zero-filled during the copy: the copy took 26 ms instead of 3.
    """
    inner = GatedStore(tmp_path / "store")
    inner.gate.set()
    pipe = UploadPipeline(inner, threads=1, in_flight=1)
    mib = 1024 * 1024
    buf = bytearray(21 * mib)
    used: list[bytearray] = []  # held, so that no id is reused by a new buffer
    for i, size in enumerate((16 * mib + 100, 17 * mib + 5, 18 * mib, 20 * mib + 100_000)):
        buf[:1] = bytes([i])
        pipe.put(_pack(i), memoryview(buf)[:size])
        pipe.drain()
        deadline = time.monotonic() + 5
        while not pipe._free and time.monotonic() < deadline:
            time.sleep(0.01)  # the buffer comes back in the upload's done callback
        assert len(pipe._free) == 1
        used.append(pipe._free[0])
        assert inner.stat(_pack(i)).size == size and inner.get(_pack(i), 0, 1) == bytes([i])
    assert all(b is used[0] for b in used)
    pipe.close()
    # Small objects get what they need; packs whole steps.
    assert pack_buffer_size(1_000) == 1_000
    assert pack_buffer_size(16 * mib + 1) == pack_buffer_size(PACK_BUFFER_STEP * 3) == 24 * mib


def test_an_index_waiting_for_its_packs_holds_no_upload_thread(tmp_path: Path) -> None:
    # Two upload threads: one pack is held at the gate, an index waits for it. The next
    # pack must start on the second thread, not queue behind a thread parked by the index.
    inner = GatedStore(tmp_path / "store")
    pipe = UploadPipeline(inner, threads=2, in_flight=3)
    pipe.put(_pack(0), b"zero")
    index = "index/" + "d" * 64
    pipe.put(index, b"index")
    pipe.put(_pack(1), b"one")
    deadline = time.monotonic() + 5
    while len(inner.started) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert inner.started == [_pack(0), _pack(1)]
    assert not inner.exists(index)
    inner.gate.set()
    pipe.drain()
    assert inner.seen_at_index == [_pack(0), _pack(1)] or inner.seen_at_index == [_pack(0)]
    assert inner.get(index) == b"index"
    pipe.close()
