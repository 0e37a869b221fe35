"""A repository: keys, index, pack writers and recovery points on one store.

This is the only place that knows the write order: packs, then index files, then
the reference list, then the recovery point. Everything above it (file and disk
backup, restore, verify) asks the repository to store or load blobs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kluis.catalog import KluisError
from kluis.engine import chunker as chunker_params
from kluis.engine.blobs import BlobCodec
from kluis.engine.format import (
    FORMAT_VERSION,
    NONCE_SIZE,
    BlobType,
    IndexEntry,
    decode_point,
    decode_refs,
    encode_point,
    encode_refs,
    point_name,
    refs_name,
)
from kluis.engine.index import Index, write_index_file
from kluis.engine.keys import KdfParams, MasterKeys, WrappedKeys, wrap
from kluis.engine.packs import DEFAULT_PACK_SIZE, PackReader, PackWriter
from kluis.stores import Store

# Write an index file after this many new blobs, so an interrupted backup leaves
# indexed packs that the next run reuses instead of uploading again.
INDEX_FLUSH_BLOBS = 20_000
INDEX_FLUSH_PACKS = 16


@dataclass(frozen=True)
class RecoveryPointInfo:
    """The plaintext header of a recovery point (what a vault may see)."""

    id: str
    time: str
    kind: str
    header: dict[str, Any]


class Repository:
    """An open, unlocked repository. Thread-safe for blob writes and reads."""

    def __init__(
        self,
        store: Store,
        keys: MasterKeys,
        config: dict[str, Any],
        *,
        cache_dir: Path | None = None,
        pack_size: int = DEFAULT_PACK_SIZE,
    ) -> None:
        self.store = store
        self.keys = keys
        self.config = config
        self.cache_dir = cache_dir
        # KLUIS_PACK_SIZE exists for tests and measurements (many small packs); the format allows any size.
        self.pack_size = int(os.environ.get("KLUIS_PACK_SIZE", pack_size))
        self.index = Index()
        self._local = threading.local()
        self._writers: list[PackWriter] = []
        self._writers_lock = threading.Lock()
        self._unindexed: list[IndexEntry] = []
        self._unindexed_packs = 0
        self._index_lock = threading.Lock()
        self.reader = PackReader(store)
        self._point_aead = AESGCM(keys.encryption_key)

    # -- creation and opening -------------------------------------------------------------

    @classmethod
    def init(
        cls,
        store: Store,
        passphrase: str,
        *,
        params: KdfParams | None = None,
        keys: MasterKeys | None = None,
        cache_dir: Path | None = None,
    ) -> tuple[Repository, WrappedKeys, bytes]:
        """Create a repository on an empty store; returns it, its key file and the KEK."""
        if store.exists("config"):
            raise KluisError("RepoAlreadyExists", location=store.url)
        keys = keys or MasterKeys.generate()
        wrapped, kek = wrap(keys, passphrase, params)
        config = {
            "version": FORMAT_VERSION,
            "id": secrets.token_hex(16),
            "chunker": {
                "min": chunker_params.MIN_SIZE,
                "avg": chunker_params.AVG_SIZE,
                "max": chunker_params.MAX_SIZE,
            },
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        store.put(f"keys/{secrets.token_hex(8)}", wrapped.to_json())
        store.put("config", json.dumps(config, indent=1).encode())
        return cls(store, keys, config, cache_dir=cache_dir), wrapped, kek

    @staticmethod
    def read_config(store: Store) -> dict[str, Any]:
        """The repository's plaintext config; RepoNotFound / RepoFormatUnsupported."""
        try:
            raw = store.get("config")
        except KluisError as exc:
            if exc.code == "StoreObjectNotFound":
                raise KluisError("RepoNotFound", location=store.url) from None
            raise
        config: dict[str, Any] = json.loads(raw)
        if config.get("version") != FORMAT_VERSION:
            raise KluisError(
                "RepoFormatUnsupported",
                location=store.url,
                version=config.get("version"),
                supported=FORMAT_VERSION,
            )
        return config

    @staticmethod
    def key_files(store: Store) -> list[tuple[str, WrappedKeys]]:
        """Every wrapped key set stored in the repository."""
        return [(o.name, WrappedKeys.from_json(o.name, store.get(o.name))) for o in store.list("keys/")]

    @classmethod
    def open(
        cls,
        store: Store,
        *,
        passphrase: str | None = None,
        kek: bytes | None = None,
        cache_dir: Path | None = None,
        load_index: bool = True,
    ) -> Repository:
        """Unlock with a passphrase or a KEK; RepoPassphraseIncorrect when neither fits."""
        config = cls.read_config(store)
        # The index holds no secrets: it loads on a thread of its own while this one derives
        # the key (argon2 releases the interpreter lock). Opening the benchmark repository
        # took 0.20 s instead of 0.26 s.
        index = Index()
        loading: Future[int] | None = None
        pool: ThreadPoolExecutor | None = None
        if load_index:
            pool = ThreadPoolExecutor(1, thread_name_prefix="kluis-index")
            loading = pool.submit(index.load, store, cache_dir / "index-cache" if cache_dir else None)
        try:
            keys: MasterKeys | None = None
            for _name, wrapped in cls.key_files(store):
                candidate = kek if kek is not None else wrapped.kek_for(passphrase or "")
                try:
                    keys = wrapped.unwrap(candidate, repo=store.url)
                    break
                except KluisError as exc:
                    if exc.code != "RepoPassphraseIncorrect":
                        raise
            if keys is None:
                raise KluisError("RepoPassphraseIncorrect", repo=store.url)
            if loading is not None:
                loading.result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        repo = cls(store, keys, config, cache_dir=cache_dir)
        repo.index = index
        return repo

    def add_key(self, passphrase: str, params: KdfParams | None = None) -> tuple[str, WrappedKeys, bytes]:
        """Store the same master keys under another passphrase (used to change it)."""
        wrapped, kek = wrap(self.keys, passphrase, params)
        name = f"keys/{secrets.token_hex(8)}"
        self.store.put(name, wrapped.to_json())
        return name, wrapped, kek

    # -- blobs ------------------------------------------------------------------------

    def codec(self) -> BlobCodec:
        """This thread's codec."""
        codec: BlobCodec | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = BlobCodec(self.keys)
            self._local.codec = codec
        return codec

    def writer(self, blob_type: BlobType = BlobType.DATA) -> PackWriter:
        """This thread's pack writer for data, or for listings and maps.

        Listings go into their own, smaller packs (like restic's tree packs): they are
        read together on every restore, mount and verify, and the thread that writes
        them need not hold a data-sized buffer.
        """
        attr = "writer" if blob_type == BlobType.DATA else "meta_writer"
        w: PackWriter | None = getattr(self._local, attr, None)
        if w is None:
            size = self.pack_size if blob_type == BlobType.DATA else min(self.pack_size, 4 * 1024 * 1024)
            w = PackWriter(self.store, self.codec(), self._uploaded, size)
            setattr(self._local, attr, w)
            with self._writers_lock:
                self._writers.append(w)
        return w

    def _uploaded(self, entries: list[IndexEntry]) -> None:
        self.index.add(entries)
        with self._index_lock:
            self._unindexed.extend(entries)
            self._unindexed_packs += 1
            due = len(self._unindexed) >= INDEX_FLUSH_BLOBS or self._unindexed_packs >= INDEX_FLUSH_PACKS
        if due:
            self.write_index()

    def write_index(self) -> None:
        """Write an index file for every uploaded blob not in one yet."""
        with self._index_lock:
            entries, self._unindexed = self._unindexed, []
            self._unindexed_packs = 0
            if entries:
                name = write_index_file(self.store, entries)
                if name:
                    self.index.loaded_files.add(name)

    def save_blob(self, blob_type: BlobType, data: bytes | bytearray | memoryview) -> bytes:
        """Store a blob unless it exists; returns its id."""
        blob_id = self.codec().chunk_id(data)
        if self.index.reserve(blob_id):
            self.writer(blob_type).add(blob_id, blob_type, data)
        return blob_id

    def flush(self) -> None:
        """Upload every unfinished pack, then write the index file. Call from one thread."""
        with self._writers_lock:
            writers = list(self._writers)
        for w in writers:
            w.flush()
        self.write_index()

    def load_blob(self, blob_id: bytes, *, where: str = "a recovery point") -> bytes:
        """The plaintext of a blob, checked against its id."""
        entry = self.index.get(blob_id)
        if entry is None:
            raise KluisError("RepoBlobMissing", blob=blob_id.hex(), where=where)
        return self.decode_entry(entry, self.reader.read(entry))

    def load_blob_view(self, blob_id: bytes, *, where: str = "a recovery point") -> bytes | memoryview:
        """Like :meth:`load_blob`, but may return a view valid only until this thread's next load."""
        entry = self.index.get(blob_id)
        if entry is None:
            raise KluisError("RepoBlobMissing", blob=blob_id.hex(), where=where)
        return self.codec().decode_view(
            entry.id,
            entry.type,
            entry.flags,
            self.reader.read(entry),
            entry.raw_length,
            pack=entry.pack.hex(),
        )

    def decode_entry(self, entry: IndexEntry, raw: bytes | bytearray | memoryview) -> bytes:
        """Decrypt and check the stored bytes of ``entry``."""
        return self.codec().decode(
            entry.id, entry.type, entry.flags, raw, entry.raw_length, pack=entry.pack.hex()
        )

    # -- recovery points --------------------------------------------------------------

    def _seal(self, point_id: str, manifest: dict[str, Any]) -> bytes:
        plain = zstandard.ZstdCompressor(level=3).compress(json.dumps(manifest).encode())
        nonce = secrets.token_bytes(NONCE_SIZE)
        return nonce + self._point_aead.encrypt(nonce, plain, b"kluis-point:" + point_id.encode())

    def _unseal(self, point_id: str, sealed: bytes) -> dict[str, Any]:
        try:
            plain = self._point_aead.decrypt(
                sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], b"kluis-point:" + point_id.encode()
            )
            manifest: dict[str, Any] = json.loads(zstandard.ZstdDecompressor().decompress(plain))
        except (InvalidTag, ValueError, zstandard.ZstdError) as exc:
            raise KluisError("RecoveryPointCorrupt", point=point_id, reason=f"manifest: {exc!r}") from None
        return manifest

    def save_point(
        self,
        kind: str,
        manifest: dict[str, Any],
        refs: set[bytes],
        header_extra: dict[str, Any] | None = None,
        *,
        point_id: str | None = None,
    ) -> str:
        """Commit a recovery point. Everything it references must already be stored.

        Flushes packs and index first, then writes the reference list, then the point:
        the point file is the commit, so a crash before it leaves only garbage.
        """
        self.flush()
        missing = [] if self.index.contains_all(refs) else [r for r in refs if r not in self.index]
        if missing:
            raise KluisError("RepoBlobMissing", blob=missing[0].hex(), where="the new recovery point")
        point_id = point_id or secrets.token_hex(16)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        header: dict[str, Any] = {"id": point_id, "time": now, "kind": kind, "refs": len(refs)}
        header.update(header_extra or {})
        self.store.put(refs_name(point_id), encode_refs(refs))
        self.store.put(point_name(point_id), encode_point(header, self._seal(point_id, manifest)))
        return point_id

    def list_points(self) -> list[RecoveryPointInfo]:
        """Every recovery point, oldest first (only headers are read)."""
        points: list[RecoveryPointInfo] = []
        for obj in self.store.list("points/"):
            pid = obj.name.split("/", 1)[1]
            header, _ = decode_point(pid, self.store.get(obj.name))
            points.append(RecoveryPointInfo(pid, str(header["time"]), str(header["kind"]), header))
        points.sort(key=lambda p: p.time)
        return points

    def resolve_point(self, prefix: str) -> str:
        """A full point id from a unique prefix (or "latest")."""
        points = self.list_points()
        if prefix == "latest" and points:
            return points[-1].id
        matches = [p.id for p in points if p.id.startswith(prefix)]
        if len(matches) != 1 or not prefix:
            raise KluisError("RecoveryPointNotFound", point=prefix)
        return matches[0]

    def load_point(self, point_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and decrypted manifest of a recovery point."""
        try:
            data = self.store.get(point_name(point_id))
        except KluisError as exc:
            if exc.code == "StoreObjectNotFound":
                raise KluisError("RecoveryPointNotFound", point=point_id) from None
            raise
        header, sealed = decode_point(point_id, data)
        return header, self._unseal(point_id, sealed)

    def load_refs(self, point_id: str) -> list[bytes]:
        """The blob ids a recovery point references."""
        return decode_refs(point_id, self.store.get(refs_name(point_id)))

    def iter_pack_names(self) -> Iterator[str]:
        """Names of every pack in the store."""
        return (o.name for o in self.store.list("data/"))
