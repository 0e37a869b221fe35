"""The in-memory index: which pack holds each blob, loaded from the index files.

Index files are immutable, so the machine keeps a copy of each in its cache
folder and downloads only new ones. Lookups are plain dict reads and need no
lock; additions take one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from kluis.catalog import KluisError
from kluis.engine.format import IndexEntry, decode_index_rows, encode_index, index_name, object_id
from kluis.stores import Store


class Index:
    """Blob id -> IndexEntry, plus the set of ids reserved by writers that have not uploaded yet.

    Entries are kept packed into one int per blob (pack number, offset, lengths, type,
    flags) with pack ids stored once: about 150 bytes per blob instead of ~330 for an
    object per entry, which is what lets large repositories fit in memory.
    """

    def __init__(self) -> None:
        self._entries: dict[bytes, int] = {}
        self._packs: list[bytes] = []
        self._pack_no: dict[bytes, int] = {}
        self._pending: set[bytes] = set()
        self._lock = threading.Lock()
        self.loaded_files: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._entries

    def _unpack(self, blob_id: bytes, v: int) -> IndexEntry:
        return IndexEntry(
            blob_id,
            self._packs[v >> 104],
            (v >> 4) & 0xF,
            v & 0xF,
            (v >> 72) & 0xFFFFFFFF,
            (v >> 40) & 0xFFFFFFFF,
            (v >> 8) & 0xFFFFFFFF,
        )

    def contains_all(self, blob_ids: Iterable[bytes]) -> bool:
        """Whether every one of ``blob_ids`` is stored (the loop runs in C)."""
        return all(map(self._entries.__contains__, blob_ids))

    def get(self, blob_id: bytes) -> IndexEntry | None:
        """Where a blob lives, or None."""
        v = self._entries.get(blob_id)
        return None if v is None else self._unpack(blob_id, v)

    def entries(self) -> Iterator[IndexEntry]:
        """All known entries (a snapshot, safe while others add)."""
        items = list(self._entries.items())
        return (self._unpack(k, v) for k, v in items)

    def pack_ids(self) -> set[bytes]:
        """Packs the index places at least one blob in (no entry objects are built)."""
        packs = self._packs
        return {packs[no] for no in {v >> 104 for v in list(self._entries.values())}}

    def blobs_in(self, pack_ids: set[bytes]) -> dict[bytes, list[bytes]]:
        """The blobs the index places in each of ``pack_ids`` (a full scan: for rare cases)."""
        wanted = {self._pack_no[p]: p for p in pack_ids if p in self._pack_no}
        found: dict[bytes, list[bytes]] = {}
        for blob_id, v in list(self._entries.items()):
            pack = wanted.get(v >> 104)
            if pack is not None:
                found.setdefault(pack, []).append(blob_id)
        return found

    def reserve(self, blob_id: bytes) -> bool:
        """True when the caller should store this blob: nobody has it or is storing it."""
        if blob_id in self._entries:
            return False
        with self._lock:
            if blob_id in self._entries or blob_id in self._pending:
                return False
            self._pending.add(blob_id)
            return True

    def add(self, entries: Iterable[IndexEntry]) -> None:
        """Record uploaded blobs (first copy wins) and release their reservations."""
        with self._lock:
            for e in entries:
                no = self._pack_no.get(e.pack)
                if no is None:
                    no = self._pack_no[e.pack] = len(self._packs)
                    self._packs.append(e.pack)
                packed = (
                    no << 104 | e.offset << 72 | e.length << 40 | e.raw_length << 8 | e.type << 4 | e.flags
                )
                self._entries.setdefault(e.id, packed)
                self._pending.discard(e.id)

    def _add_raw(self, rows: Iterable[tuple[bytes, bytes, int, int, int, int, int]]) -> None:
        """Like :meth:`add` for rows straight out of an index file (no entry objects).

        Loading runs for every backup; building an IndexEntry per blob was most of its time.
        """
        entries = self._entries
        packs = self._packs
        pack_no = self._pack_no
        with self._lock:
            last_pack = b""
            no = -1
            for blob_id, pack, btype, flags, offset, length, raw in rows:
                if pack != last_pack:
                    got = pack_no.get(pack)
                    if got is None:
                        got = pack_no[pack] = len(packs)
                        packs.append(pack)
                    no, last_pack = got, pack
                if blob_id not in entries:
                    entries[blob_id] = no << 104 | offset << 72 | length << 40 | raw << 8 | btype << 4 | flags

    def forget_pending(self) -> None:
        """Drop reservations of blobs that were never uploaded (after a failed backup)."""
        with self._lock:
            self._pending.clear()

    def load(self, store: Store, cache_dir: Path | None = None) -> int:
        """Bring the index up to date with the store's index files; returns how many were read.

        Garbage collection replaces index files; when one this index was built from is
        gone, the whole index is rebuilt so it never claims blobs that were removed.
        """
        current = {o.name for o in store.list("index/")}
        if not self.loaded_files <= current:
            with self._lock:
                self._entries.clear()
                self._packs.clear()
                self._pack_no.clear()
            self.loaded_files.clear()
        names = sorted(current - self.loaded_files)
        for name in names:
            data = self._cached(store, name, cache_dir)
            self._add_raw(decode_index_rows(name, data))
            self.loaded_files.add(name)
        return len(names)

    @staticmethod
    def _cached(store: Store, name: str, cache_dir: Path | None) -> bytes:
        local = cache_dir / name if cache_dir else None
        if local is not None and local.is_file():
            data = local.read_bytes()
            if object_id(data).hex() == name.rsplit("/", 1)[-1]:
                return data
        data = store.get(name)
        if object_id(data).hex() != name.rsplit("/", 1)[-1]:
            raise KluisError("RepoIndexCorrupt", name=name, reason="content does not match its name")
        if local is not None:
            try:
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(local.name + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, local)
            except OSError:
                pass  # The cache is an optimisation; a full scratch folder is reported elsewhere.
        return data


def write_index_file(store: Store, entries: list[IndexEntry]) -> str | None:
    """Store ``entries`` as a new index file; returns its name (None when there is nothing)."""
    if not entries:
        return None
    data = encode_index(entries)
    name = index_name(object_id(data))
    store.put(name, data)
    return name
