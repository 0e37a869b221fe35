"""Test helpers: build repositories from format.py primitives and check GC's invariants."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta

from kluis.engine.format import (
    BlobType,
    IndexEntry,
    encode_index,
    encode_pack_trailer,
    encode_point,
    encode_refs,
    index_name,
    object_id,
    pack_name,
    point_name,
    refs_name,
)
from kluis.stores import ObjectInfo, Store
from kluis.vault.gc import list_packs, load_index, read_pack_table

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(days=10)


class Repo:
    """A repository under ``prefix`` whose blob bytes the test remembers."""

    def __init__(self, store: Store, prefix: str = "machines/m1/") -> None:
        self.store = store
        self.prefix = prefix
        self.blobs: dict[bytes, bytes] = {}
        self.created: dict[bytes, datetime] = {}

    def new_blob(self, size: int, data: bytes | None = None) -> bytes:
        payload = data if data is not None else os.urandom(size)
        blob_id = object_id(b"blob" + payload)
        self.blobs[blob_id] = payload
        return blob_id

    def add_pack(self, ids: Iterable[bytes], created: datetime = T0, index: bool = True) -> list[IndexEntry]:
        ids = list(ids)
        body = b"".join(self.blobs[i] for i in ids)
        trailer = encode_pack_trailer(
            (i, int(BlobType.DATA), 1, len(self.blobs[i]), 2 * len(self.blobs[i])) for i in ids
        )
        data = body + trailer
        pack_id = object_id(data)
        self.store.put(self.prefix + pack_name(pack_id), data)
        self.created[pack_id] = created
        entries = []
        offset = 0
        for i in ids:
            entries.append(
                IndexEntry(
                    i, pack_id, int(BlobType.DATA), 1, offset, len(self.blobs[i]), 2 * len(self.blobs[i])
                )
            )
            offset += len(self.blobs[i])
        if index:
            self.write_index(entries)
        return entries

    def write_index(self, entries: list[IndexEntry]) -> str:
        data = encode_index(entries)
        name = index_name(object_id(data))
        self.store.put(self.prefix + name, data)
        return name

    def add_point(self, point_id: str, ids: Iterable[bytes]) -> None:
        self.store.put(self.prefix + refs_name(point_id), encode_refs(ids))
        self.store.put(
            self.prefix + point_name(point_id),
            encode_point({"id": point_id, "time": "2026-01-01T00:00:00Z", "kind": "files"}, b"sealed"),
        )

    def drop_point(self, point_id: str) -> None:
        self.store.delete(self.prefix + point_name(point_id))

    def objects(self) -> dict[str, bytes]:
        """Every object of the store (all prefixes) with its bytes."""
        return {info.name: self.store.get(info.name) for info in self.store.list("")}


def check_readable(repo: Repo, live: Iterable[bytes]) -> list[IndexEntry]:
    """Every live blob is reachable through an index file, with its original bytes.

    Also: every index entry names an existing pack and agrees with that pack's own table.
    Returns the indexed entries.
    """
    snapshot = load_index(repo.store, repo.prefix)
    packs = list_packs(repo.store, repo.prefix)
    referenced = {e.pack for e in snapshot.entries if e.pack in packs}
    tables = {
        p: {(t.id, t.offset, t.length) for t in read_pack_table(repo.store, repo.prefix, p)}
        for p in referenced
    }
    by_id: dict[bytes, list[IndexEntry]] = {}
    for e in snapshot.entries:
        assert e.pack in packs, f"index names missing pack {e.pack.hex()}"
        assert (e.id, e.offset, e.length) in tables[e.pack], "index disagrees with the pack table"
        by_id.setdefault(e.id, []).append(e)
    for blob in live:
        assert blob in by_id, f"live blob {blob.hex()} is not indexed"
        for e in by_id[blob]:
            got = repo.store.get(repo.prefix + pack_name(e.pack), e.offset, e.length)
            assert got == repo.blobs[blob], f"bytes of blob {blob.hex()} changed"
    return list(snapshot.entries)


class Crash(Exception):
    """The simulated death of the GC process."""


class CrashingStore(Store):
    """Passes everything to ``inner`` but dies at the ``fail_at``-th put or delete.

    ``after=True`` performs that operation first (the crash hits right after it).
    """

    def __init__(self, inner: Store, fail_at: int, after: bool = False) -> None:
        self.inner = inner
        self.url = inner.url
        self.fail_at = fail_at
        self.after = after
        self.mutations = 0

    def _tick(self, op: Callable[[], None]) -> None:
        self.mutations += 1
        if self.mutations == self.fail_at:
            if self.after:
                op()
            raise Crash(f"crash at mutation {self.mutations}")
        op()

    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self._tick(lambda: self.inner.put(name, data))

    def delete(self, name: str) -> None:
        self._tick(lambda: self.inner.delete(name))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(name, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)
