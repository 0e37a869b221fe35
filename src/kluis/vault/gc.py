"""Garbage collection of one machine's repository, without keys.

Works on any ``kluis.stores.Store`` with the repository under ``prefix`` (``""`` or a
path ending in ``/``, e.g. ``"machines/<id>/"``). It reads only the plaintext parts of the
format (``kluis.engine.format``): recovery point reference lists, index files and pack
tables. Concurrency with backups is the caller's business: the vault runs this only while
the machine has no backup in progress (the contract's DB rule).

Public API
----------

``mark(store, prefix) -> set[bytes]``
    Union of ``refs/<point>`` of every existing ``points/<point>``: the live blob ids. A
    point without a readable reference list stops GC (RecoveryPointCorrupt).
``load_index(store, prefix) -> IndexSnapshot``
    Names and entries of every index file (checked against their names).
``list_packs(store, prefix) -> dict[bytes, int]``
    Pack id -> size of every pack in the store.
``plan(index_entries, pack_sizes, pack_created, live_ids, now, grace=24 h, repack_threshold=0.5,
pack_target_size=24 MiB) -> GcPlan``
    Pure decision, no I/O. A pack created less than ``grace`` before ``now`` (or missing
    from ``pack_created``) is young and untouched, dead blobs and all, so an interrupted
    backup can still reuse it. Of the other packs: no live blob -> delete; live bytes /
    pack size below ``repack_threshold`` -> repack (copy its live blobs to new packs, then
    delete it); otherwise kept, with its dead blobs dropped from the index. A live blob
    stored more than once (same id in several packs, see ``GcPlan.duplicates``) keeps one
    copy: one in a young pack if any, else the one in the best-used pack.
``apply(store, prefix, plan) -> GcResult``
    Carries the plan out in the crash-safe order: (1) write the new packs (live blobs' byte
    ranges copied verbatim, table by ``encode_pack_trailer``, named by ``object_id``),
    (2) write ONE new index file covering every remaining blob, (3) delete the old index
    files, (4) delete the removed packs, (5) delete ``refs/<id>`` whose ``points/<id>`` is
    gone. A crash after any step leaves every live blob reachable through some index file;
    running GC again finishes the job. Before writing anything it re-reads the index files
    and the tables of every pack it will remove: index entries the plan did not see in
    those packs stop it (GarbageCollectionPlanStale, nothing changed); a live blob found
    only in the table of such a pack is copied too ("rescued"); a pack whose table cannot
    be read is left in place (``GcResult.packs_left``).
``run_gc(store, prefix, pack_created, now, ...) -> GcResult``
    mark + load_index + list_packs + plan + apply.
``rebuild_index(store, prefix, *, write=False) -> RebuiltIndex``
    Index entries reconstructed from the pack tables alone (repair, tests). With
    ``write=True`` it stores them as one index file and removes the others.
``read_pack_table(store, prefix, pack_id, size=None) -> list[PackEntry]``
    One pack's blob table (two ranged reads at most).

The server records ``GcResult.new_packs`` (created now) and replaces the machine's blob rows
with ``GcResult.index_entries``.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kluis.catalog import KluisError
from kluis.engine.format import (
    FOOTER_SIZE,
    ID_SIZE,
    IndexEntry,
    PackEntry,
    decode_index,
    decode_pack_trailer,
    decode_refs,
    encode_index,
    encode_pack_trailer,
    index_name,
    object_id,
    pack_name,
    pack_trailer_size,
    refs_name,
)
from kluis.stores import Store, check_name

DEFAULT_GRACE = timedelta(hours=24)
DEFAULT_REPACK_THRESHOLD = 0.5
# The agent's packs aim at 24 MiB (kluis.engine.packs.DEFAULT_PACK_SIZE); repacked ones too.
DEFAULT_PACK_TARGET = 24 * 1024 * 1024
# One read of a pack's last bytes covers the table of packs of up to ~370 blobs.
_TAIL_GUESS = 16 * 1024


def check_prefix(prefix: str) -> str:
    """``prefix`` itself if it is ``""`` or a valid object path ending in ``/``."""
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise ValueError(f"repository prefix {prefix!r} must end with '/'")
    check_name(prefix[:-1])
    return prefix


def _listing(store: Store, prefix: str, folder: str) -> list[tuple[str, int]]:
    """(name relative to the repository, size) of objects under ``folder``, sorted."""
    full = prefix + folder
    return sorted((info.name[len(prefix) :], info.size) for info in store.list(full))


def _is_hex_id(text: str) -> bool:
    return len(text) == 2 * ID_SIZE and all(c in "0123456789abcdef" for c in text)


# --- reading the repository ----------------------------------------------------------------


def list_packs(store: Store, prefix: str) -> dict[bytes, int]:
    """Pack id -> size for every ``data/<hh>/<id>`` object (other names are ignored)."""
    check_prefix(prefix)
    packs: dict[bytes, int] = {}
    for name, size in _listing(store, prefix, "data/"):
        parts = name.split("/")
        if len(parts) == 3 and _is_hex_id(parts[2]) and parts[1] == parts[2][:2]:
            packs[bytes.fromhex(parts[2])] = size
    return packs


def _point_ids(store: Store, prefix: str) -> list[str]:
    return [name.split("/", 1)[1] for name, _ in _listing(store, prefix, "points/") if name.count("/") == 1]


def mark(store: Store, prefix: str) -> set[bytes]:
    """Every blob id referenced by an existing recovery point."""
    check_prefix(prefix)
    live: set[bytes] = set()
    for point_id in _point_ids(store, prefix):
        try:
            data = store.get(prefix + refs_name(point_id))
        except KluisError as exc:
            if exc.code != "StoreObjectNotFound":
                raise
            # Sweeping without this list could delete the point's data: stop instead.
            raise KluisError(
                "RecoveryPointCorrupt", point=point_id, reason="its reference list is missing"
            ) from None
        live.update(decode_refs(point_id, data))
    return live


@dataclass(frozen=True)
class IndexSnapshot:
    """The index files of a repository (names relative to its prefix) and their entries."""

    files: tuple[str, ...]
    entries: tuple[IndexEntry, ...]


def load_index(store: Store, prefix: str) -> IndexSnapshot:
    """Read every index file; RepoIndexCorrupt if one is damaged or misnamed."""
    check_prefix(prefix)
    files: list[str] = []
    entries: list[IndexEntry] = []
    for name, _ in _listing(store, prefix, "index/"):
        stem = name.split("/", 1)[1]
        if "/" in stem or not _is_hex_id(stem):
            continue
        data = store.get(prefix + name)
        if object_id(data).hex() != stem:
            raise KluisError("RepoIndexCorrupt", name=prefix + name, reason="content does not match its name")
        entries.extend(decode_index(prefix + name, data))
        files.append(name)
    return IndexSnapshot(tuple(files), tuple(entries))


def read_pack_table(store: Store, prefix: str, pack_id: bytes, size: int | None = None) -> list[PackEntry]:
    """The blob table of one pack, from its last bytes; RepoPackCorrupt if it does not add up."""
    name = prefix + pack_name(pack_id)
    if size is None:
        size = store.stat(name).size
    if size < FOOTER_SIZE:
        raise KluisError("RepoPackCorrupt", pack=name, reason="too short for a pack footer")
    first = min(size, _TAIL_GUESS)
    tail = store.get(name, size - first, first)
    if len(tail) != first:
        raise KluisError("RepoPackCorrupt", pack=name, reason="shorter than the store reports")
    # Footer layout (format.py): count (u32) | crc32 (u32) | magic.
    (count,) = struct.unpack_from("<I", tail, len(tail) - FOOTER_SIZE)
    needed = pack_trailer_size(count)
    if first < needed <= size:
        tail = store.get(name, size - needed, needed)
    return decode_pack_trailer(name, tail, size)


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GcPlan:
    """What one GC run will do; see :func:`plan`. Pack and blob ids are raw bytes."""

    delete_packs: frozenset[bytes]
    repack_packs: frozenset[bytes]
    copy: tuple[IndexEntry, ...]
    keep: tuple[IndexEntry, ...]
    drop: tuple[IndexEntry, ...]
    duplicates: Mapping[bytes, tuple[bytes, ...]]
    missing_live: frozenset[bytes]
    young_packs: frozenset[bytes]
    live_ids: frozenset[bytes] = field(repr=False)
    pack_target_size: int
    bytes_to_free: int

    @property
    def removes(self) -> frozenset[bytes]:
        """Every pack this plan deletes (dead ones and repacked ones)."""
        return self.delete_packs | self.repack_packs

    @property
    def changes_nothing(self) -> bool:
        """True when no pack is removed and no index entry dropped."""
        return not (self.delete_packs or self.repack_packs or self.drop)


def _new_pack_sizes(lengths: Iterable[int], target: int) -> list[int]:
    """Sizes of the packs that blobs of ``lengths`` fill, in order, at ``target`` bytes."""
    sizes: list[int] = []
    count = body = 0
    for length in lengths:
        if count and body + length + pack_trailer_size(count + 1) > target:
            sizes.append(body + pack_trailer_size(count))
            count = body = 0
        count += 1
        body += length
    if count:
        sizes.append(body + pack_trailer_size(count))
    return sizes


def plan(
    index_entries: Iterable[IndexEntry],
    pack_sizes: Mapping[bytes, int],
    pack_created: Mapping[bytes, datetime],
    live_ids: Set[bytes],
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
    repack_threshold: float = DEFAULT_REPACK_THRESHOLD,
    pack_target_size: int = DEFAULT_PACK_TARGET,
) -> GcPlan:
    """Decide which packs to delete or repack and which index entries remain."""
    if not 0.0 <= repack_threshold <= 1.0:
        raise ValueError("repack_threshold must be between 0 and 1")
    if grace < timedelta(0):
        raise ValueError("grace must not be negative")
    if pack_target_size < 1024:
        raise ValueError("pack_target_size is too small")
    live = frozenset(live_ids)
    # The same entry may sit in several index files; decide per distinct entry.
    entries = sorted(set(index_entries), key=lambda e: (e.pack, e.offset, e.id, e.length))
    young = frozenset(p for p in pack_sizes if p not in pack_created or now - pack_created[p] < grace)

    copies: dict[bytes, list[IndexEntry]] = defaultdict(list)
    dangling: list[IndexEntry] = []
    for e in entries:
        (copies[e.id] if e.pack in pack_sizes else dangling).append(e)
    duplicates = {
        blob: tuple(sorted(e.pack for e in found)) for blob, found in copies.items() if len(found) > 1
    }

    # First pass counts every live copy, so a duplicated blob does not make both of its
    # packs look emptier than they are when choosing which copy to keep.
    all_live_bytes: dict[bytes, int] = defaultdict(int)
    for e in entries:
        if e.id in live and e.pack in pack_sizes:
            all_live_bytes[e.pack] += e.length

    def rank(e: IndexEntry) -> tuple[bool, float, bytes, int]:
        return (e.pack in young, all_live_bytes[e.pack] / max(1, pack_sizes[e.pack]), e.pack, -e.offset)

    keeper: dict[bytes, IndexEntry] = {}
    for blob in live:
        found = copies.get(blob)
        if found:
            keeper[blob] = max(found, key=rank)
    missing = frozenset(blob for blob in live if blob not in keeper)

    live_bytes: dict[bytes, int] = defaultdict(int)
    live_count: dict[bytes, int] = defaultdict(int)
    for e in keeper.values():
        live_bytes[e.pack] += e.length
        live_count[e.pack] += 1
    delete: set[bytes] = set()
    repack: set[bytes] = set()
    for pack, size in pack_sizes.items():
        if pack in young:
            continue
        if live_bytes[pack] == 0:
            delete.add(pack)
        elif (
            live_bytes[pack] / max(1, size) < repack_threshold
            # A pack of nothing but live blobs would be rewritten into itself: leave it.
            and live_bytes[pack] + pack_trailer_size(live_count[pack]) < size
        ):
            repack.add(pack)

    copy: list[IndexEntry] = []
    keep: list[IndexEntry] = []
    drop: list[IndexEntry] = []
    for e in entries:
        if e.pack not in pack_sizes:
            continue
        is_keeper = keeper.get(e.id) is e
        if e.pack in young:
            keep.append(e)
        elif e.pack in repack and is_keeper:
            copy.append(e)
        elif e.pack in repack or e.pack in delete or not is_keeper:
            drop.append(e)
        else:
            keep.append(e)
    for e in dangling:
        # A live blob whose pack is missing keeps its entry so verify can name it; it is
        # reported in missing_live. Dead ones just go.
        (keep if e.id in live else drop).append(e)

    removed = sum(pack_sizes[p] for p in delete | repack)
    written = sum(_new_pack_sizes((e.length for e in copy), pack_target_size))
    return GcPlan(
        delete_packs=frozenset(delete),
        repack_packs=frozenset(repack),
        copy=tuple(copy),
        keep=tuple(keep),
        drop=tuple(drop),
        duplicates=duplicates,
        missing_live=missing,
        young_packs=young,
        live_ids=live,
        pack_target_size=pack_target_size,
        bytes_to_free=removed - written,
    )


# --- applying ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GcResult:
    """What :func:`apply` did."""

    bytes_freed: int  # bytes of removed packs minus bytes of packs that did not exist before
    packs_deleted: tuple[bytes, ...]  # every removed pack, rewritten ones included
    packs_rewritten: tuple[bytes, ...]  # removed packs whose live blobs were copied first
    new_packs: Mapping[bytes, int]  # id -> size of packs written (one may equal an existing pack)
    blobs_copied: int
    blobs_rescued: int  # live blobs found only in a removed pack's table, copied and indexed
    blobs_dropped: int  # index entries dropped: dead blobs, extra copies, missing packs
    index_entries: tuple[IndexEntry, ...]  # the complete new index
    index_name: str | None  # the index file now holding them (relative to the prefix)
    index_files_deleted: tuple[str, ...]
    refs_deleted: tuple[str, ...]
    packs_left: Mapping[bytes, str] = field(default_factory=dict)  # kept despite the plan: why


def _stale(prefix: str, unknown: list[IndexEntry]) -> KluisError:
    first = unknown[0]
    return KluisError(
        "GarbageCollectionPlanStale",
        repository=prefix or "the repository",
        count=len(unknown),
        blob=first.id.hex(),
        pack=first.pack.hex(),
    )


def _entry_matches(e: IndexEntry, t: PackEntry) -> bool:
    return (e.id, e.type, e.flags, e.offset, e.length, e.raw_length) == (
        t.id,
        t.type,
        t.flags,
        t.offset,
        t.length,
        t.raw_length,
    )


def _write_packs(
    store: Store, prefix: str, copies: list[IndexEntry], target: int
) -> tuple[list[IndexEntry], dict[bytes, int]]:
    """Copy the blobs' byte ranges into new packs; returns their index entries and sizes."""
    groups: list[list[IndexEntry]] = [[]]
    body = 0
    for e in copies:
        group = groups[-1]
        if group and body + e.length + pack_trailer_size(len(group) + 1) > target:
            groups.append([])
            body = 0
        groups[-1].append(e)
        body += e.length
    new_entries: list[IndexEntry] = []
    new_packs: dict[bytes, int] = {}
    for group in groups:
        if not group:
            continue
        # One ranged read per source pack covers all of this group's blobs from it.
        spans: dict[bytes, tuple[int, bytes]] = {}
        by_source: dict[bytes, list[IndexEntry]] = defaultdict(list)
        for e in group:
            by_source[e.pack].append(e)
        for source, members in by_source.items():
            start = min(e.offset for e in members)
            end = max(e.offset + e.length for e in members)
            data = store.get(prefix + pack_name(source), start, end - start)
            if len(data) != end - start:
                raise KluisError(
                    "RepoPackCorrupt", pack=prefix + pack_name(source), reason="shorter than its table"
                )
            spans[source] = (start, data)
        body_parts: list[bytes] = []
        for e in group:
            start, data = spans[e.pack]
            body_parts.append(data[e.offset - start : e.offset - start + e.length])
        trailer = encode_pack_trailer((e.id, e.type, e.flags, e.length, e.raw_length) for e in group)
        pack_bytes = b"".join(body_parts) + trailer
        new_id = object_id(pack_bytes)
        store.put(prefix + pack_name(new_id), pack_bytes)
        new_packs[new_id] = len(pack_bytes)
        offset = 0
        for e in group:
            new_entries.append(IndexEntry(e.id, new_id, e.type, e.flags, offset, e.length, e.raw_length))
            offset += e.length
    return new_entries, new_packs


def apply(store: Store, prefix: str, gc_plan: GcPlan) -> GcResult:
    """Carry out ``gc_plan`` on the repository under ``prefix``; see the module docstring."""
    check_prefix(prefix)
    snapshot = load_index(store, prefix)
    present = list_packs(store, prefix)
    current = sorted(set(snapshot.entries), key=lambda e: (e.pack, e.offset, e.id, e.length))

    # Index entries the plan did not see, in a pack it removes, mean someone wrote meanwhile.
    planned = set(gc_plan.copy) | set(gc_plan.drop)
    unknown = [e for e in current if e.pack in gc_plan.removes and e not in planned]
    missing_sources = sorted({e.pack for e in gc_plan.copy if e.pack not in present})
    if unknown or missing_sources:
        raise _stale(prefix, unknown or [next(e for e in gc_plan.copy if e.pack == missing_sources[0])])

    # Read the table of every pack to remove before changing anything.
    removing = sorted(p for p in gc_plan.removes if p in present)
    tables: dict[bytes, list[PackEntry]] = {}
    left: dict[bytes, str] = {}
    for pack in removing:
        try:
            tables[pack] = read_pack_table(store, prefix, pack, present[pack])
        except KluisError as exc:
            if exc.code not in ("RepoPackCorrupt", "StoreObjectNotFound"):
                raise
            left[pack] = exc.message
    for e in gc_plan.copy:
        table = tables.get(e.pack)
        if table is not None and not any(_entry_matches(e, t) for t in table if t.offset == e.offset):
            left[e.pack] = f"its blob table disagrees with the index about blob {e.id.hex()}"
    removed = [p for p in removing if p not in left]
    removed_set = set(removed)

    # What stays in the index: every current entry not in a removed pack and not dropped.
    dropped = set(gc_plan.drop)
    remaining: list[IndexEntry] = []
    to_copy: list[IndexEntry] = []
    copy_set = set(gc_plan.copy)
    for e in current:
        if e.pack in removed_set:
            if e in copy_set:
                to_copy.append(e)
        elif e.pack in left and e in copy_set:
            remaining.append(e)  # its pack stays, so its entry does too
        elif e not in dropped:
            remaining.append(e)
    # Live blobs that only a removed pack's table knows of are copied as well.
    covered = {e.id for e in remaining} | {e.id for e in to_copy}
    rescued = 0
    for pack in removed:
        for t in tables[pack]:
            if t.id in gc_plan.live_ids and t.id not in covered:
                to_copy.append(IndexEntry(t.id, pack, t.type, t.flags, t.offset, t.length, t.raw_length))
                covered.add(t.id)
                rescued += 1
    to_copy.sort(key=lambda e: (e.pack, e.offset, e.id))

    # (1) new packs
    new_entries, new_packs = _write_packs(store, prefix, to_copy, gc_plan.pack_target_size)
    # Content addressing: a new pack may be byte-identical to one being removed. It is the
    # same object then, and must not be deleted.
    removed = [p for p in removed if p not in new_packs]
    final = remaining + new_entries
    # (2) one index file covering everything that remains
    new_index: str | None = None
    old_files = list(snapshot.files)
    nothing_changed = not removed and not new_entries and set(final) == set(current)
    if final and not (nothing_changed and len(old_files) == 1):
        data = encode_index(final)
        new_index = index_name(object_id(data))
        store.put(prefix + new_index, data)
    elif final:
        new_index = old_files[0]
    # (3) old index files, (4) removed packs
    deleted_index = tuple(name for name in old_files if name != new_index)
    for name in deleted_index:
        store.delete(prefix + name)
    for pack in removed:
        store.delete(prefix + pack_name(pack))
    # (5) reference lists of points that no longer exist
    points = set(_point_ids(store, prefix))
    refs_gone = tuple(
        name
        for name, _ in _listing(store, prefix, "refs/")
        if name.count("/") == 1 and name.split("/", 1)[1] not in points
    )
    for name in refs_gone:
        store.delete(prefix + name)

    copied_from = {e.pack for e in to_copy}
    return GcResult(
        bytes_freed=sum(present[p] for p in removed)
        - sum(size for p, size in new_packs.items() if p not in present),
        packs_deleted=tuple(removed),
        packs_rewritten=tuple(p for p in removed if p in copied_from),
        new_packs=new_packs,
        blobs_copied=len(new_entries),
        blobs_rescued=rescued,
        blobs_dropped=len(set(current) - set(remaining) - set(to_copy)),
        index_entries=tuple(final),
        index_name=new_index,
        index_files_deleted=deleted_index,
        refs_deleted=refs_gone,
        packs_left=left,
    )


def run_gc(
    store: Store,
    prefix: str,
    pack_created: Mapping[bytes, datetime],
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
    repack_threshold: float = DEFAULT_REPACK_THRESHOLD,
    pack_target_size: int = DEFAULT_PACK_TARGET,
) -> GcResult:
    """Mark, plan and apply in one call (packs missing from ``pack_created`` count as young)."""
    live = mark(store, prefix)
    snapshot = load_index(store, prefix)
    sizes = list_packs(store, prefix)
    gc_plan = plan(
        snapshot.entries, sizes, pack_created, live, now, grace, repack_threshold, pack_target_size
    )
    return apply(store, prefix, gc_plan)


# --- repair --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RebuiltIndex:
    """Index entries read back from pack tables, and the packs whose table was unreadable."""

    entries: tuple[IndexEntry, ...]
    unreadable: Mapping[bytes, str]
    index_name: str | None = None


def rebuild_index(store: Store, prefix: str, *, write: bool = False) -> RebuiltIndex:
    """Reconstruct the index from the packs' tables alone; optionally store it as the index.

    With ``write=True`` the new index file is written first and only then are the other
    index files deleted, so a crash never leaves the repository without an index.
    """
    check_prefix(prefix)
    entries: list[IndexEntry] = []
    unreadable: dict[bytes, str] = {}
    for pack, size in sorted(list_packs(store, prefix).items()):
        try:
            table = read_pack_table(store, prefix, pack, size)
        except KluisError as exc:
            if exc.code not in ("RepoPackCorrupt", "StoreObjectNotFound"):
                raise
            unreadable[pack] = exc.message
            continue
        entries.extend(
            IndexEntry(t.id, pack, t.type, t.flags, t.offset, t.length, t.raw_length) for t in table
        )
    name: str | None = None
    if write:
        old = [n for n, _ in _listing(store, prefix, "index/")]
        if entries:
            data = encode_index(entries)
            name = index_name(object_id(data))
            store.put(prefix + name, data)
        for other in old:
            if other != name:
                store.delete(prefix + other)
    return RebuiltIndex(tuple(entries), unreadable, name)
