"""The store contract, run against every backend in conftest.BACKENDS."""

from __future__ import annotations

import os
import threading

import pytest

from kluis.catalog import KluisError
from kluis.stores import Store


def test_put_get_roundtrip(store: Store) -> None:
    data = os.urandom(100_000)
    store.put("data/ab/abcdef", data)
    assert store.get("data/ab/abcdef") == data
    assert store.stat("data/ab/abcdef").size == len(data)
    assert store.exists("data/ab/abcdef")


def test_get_range(store: Store) -> None:
    data = bytes(range(256)) * 40
    store.put("obj", data)
    assert store.get("obj", 10, 20) == data[10:30]
    assert store.get("obj", 0, 1) == data[:1]
    assert store.get("obj", len(data) - 5) == data[-5:]
    assert store.get("obj", len(data) - 5, 100) == data[-5:]
    assert store.get("obj", 5000, 0) == b""


def test_put_replaces(store: Store) -> None:
    store.put("x/y", b"first")
    store.put("x/y", b"second one")
    assert store.get("x/y") == b"second one"
    assert store.stat("x/y").size == 10


def test_empty_object(store: Store) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.stat("empty").size == 0


def test_missing_object_is_catalog_error(store: Store) -> None:
    with pytest.raises(KluisError) as info:
        store.get("nope")
    assert info.value.code == "StoreObjectNotFound"
    with pytest.raises(KluisError) as info:
        store.stat("nope/deeper")
    assert info.value.code == "StoreObjectNotFound"
    assert not store.exists("nope")


def test_list_by_prefix(store: Store) -> None:
    names = ["data/00/a1", "data/00/a2", "data/ff/b1", "index/i1", "points/p1", "points/p2.ids", "config"]
    for n in names:
        store.put(n, n.encode())
    assert sorted(o.name for o in store.list("")) == sorted(names)
    assert sorted(o.name for o in store.list("data/")) == ["data/00/a1", "data/00/a2", "data/ff/b1"]
    assert sorted(o.name for o in store.list("data/00/")) == ["data/00/a1", "data/00/a2"]
    assert sorted(o.name for o in store.list("points/p")) == ["points/p1", "points/p2.ids"]
    assert sorted(o.name for o in store.list("dat")) == ["data/00/a1", "data/00/a2", "data/ff/b1"]
    assert list(store.list("nothing/")) == []
    sizes = {o.name: o.size for o in store.list("index/")}
    assert sizes == {"index/i1": len(b"index/i1")}


def test_delete(store: Store) -> None:
    store.put("d/1", b"x")
    store.delete("d/1")
    assert not store.exists("d/1")
    store.delete("d/1")  # deleting a missing object is fine
    assert list(store.list("d/")) == []


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "..", "a//b", "./a", "a/"])
def test_rejects_unsafe_names(store: Store, bad: str) -> None:
    with pytest.raises(ValueError):
        store.put(bad, b"x")


def test_concurrent_puts(store: Store) -> None:
    blobs = {f"c/{i:03d}": os.urandom(5000 + i) for i in range(40)}

    def worker(items: list[tuple[str, bytes]]) -> None:
        for name, data in items:
            store.put(name, data)

    items = list(blobs.items())
    threads = [threading.Thread(target=worker, args=(items[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, data in blobs.items():
        assert store.get(name) == data
    assert len(list(store.list("c/"))) == 40


def test_binary_safe_large(store: Store) -> None:
    data = os.urandom(9 * 1024 * 1024 + 7)
    store.put("big", memoryview(data))
    assert store.get("big", 8 * 1024 * 1024, 1024 * 1024 + 7) == data[8 * 1024 * 1024 :]


def test_folder_of_names_is_not_an_object(store: Store) -> None:
    # Object stores and file systems both have "folders" of a/b/c; none is an object itself.
    store.put("data/00/a1", b"x")
    for folder in ("data", "data/00"):
        assert not store.exists(folder)
        with pytest.raises(KluisError) as info:
            store.get(folder)
        assert info.value.code == "StoreObjectNotFound"
    store.delete("data/00")  # deleting a folder name is deleting a missing object: no effect
    assert store.get("data/00/a1") == b"x"


@pytest.mark.parametrize("name", ["odd/sp ace", "odd/plus+sign", "odd/pct%20x", "odd/q?m#h&a=b", "odd/ünï"])
def test_names_need_no_escaping_by_callers(store: Store, name: str) -> None:
    store.put(name, name.encode())
    assert store.get(name) == name.encode()
    assert [o.name for o in store.list("odd/")] == [name]


def test_missing_object_reads(store: Store) -> None:
    # Ranged and zero-length reads of a missing object still report it missing.
    for offset, length in ((0, 0), (5, None), (0, 10)):
        with pytest.raises(KluisError) as info:
            store.get("absent", offset, length)
        assert info.value.code == "StoreObjectNotFound"


def test_range_past_end_and_negative(store: Store) -> None:
    store.put("short", b"12345")
    assert store.get("short", 5) == b""
    assert store.get("short", 6) == b""
    assert store.get("short", 100, 10) == b""
    store.put("zero", b"")
    assert store.get("zero", 0, 10) == b""
    with pytest.raises(ValueError):
        store.get("short", -1)
    with pytest.raises(ValueError):
        store.get("short", 0, -1)
