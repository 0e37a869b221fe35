"""The checksum store: what each file and folder looked like at the last backup.

A SQLite database in the scratch folder. It is only a cache: losing it costs one
slower backup, never data.

- ``files``, keyed by path: a file's device, inode, size, mtime and ctime, its chunk
  list and its extended attributes. When those five values are unchanged the file is
  neither read nor hashed, and its xattrs (and so its ACLs) are not read either:
  changing an xattr, the mode or the owner bumps the ctime.
- ``dirs``, keyed by path: a signature of a folder's entries (names and the same five
  values, owners), a hash of its subfolders' tree ids, the tree id that was built from
  them and the chunk ids of its files. When both match, the folder's listing is the
  stored tree and need not be built, encoded, hashed or looked up again.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path
from typing import Any

from kluis.catalog import KluisError

# Bumped whenever a table changes; an older store is emptied (it is only a cache).
_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    dir BLOB NOT NULL, name BLOB NOT NULL,
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    content BLOB NOT NULL, xattrs TEXT,
    PRIMARY KEY (dir, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirs (
    path BLOB PRIMARY KEY, flat BLOB NOT NULL, kids BLOB NOT NULL,
    tree BLOB NOT NULL, refs BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_HOLE = struct.Struct("<Q")
# Rows are written in batches with executemany: one statement per file was a large share
# of the walking thread's time in a first backup.
_BATCH = 2000
_COMMIT_EVERY = 20_000

FileRow = tuple[int, int, int, int, int, bytes, str | None]
DirRow = tuple[bytes, bytes, bytes, bytes]


def encode_content(content: list[bytes | int]) -> bytes:
    """Chunk list to bytes: 0x00 + 32-byte id, or 0x01 + 8-byte hole length."""
    out = bytearray()
    for c in content:
        if isinstance(c, bytes):
            out += b"\x00"
            out += c
        else:
            out += b"\x01"
            out += _HOLE.pack(c)
    return bytes(out)


def decode_content(data: bytes) -> list[bytes | int]:
    """Inverse of :func:`encode_content` (chunk ids stay bytes)."""
    out: list[bytes | int] = []
    i = 0
    n = len(data)
    while i < n:
        if data[i] == 0:
            out.append(data[i + 1 : i + 33])
            i += 33
        else:
            out.append(_HOLE.unpack_from(data, i + 1)[0])
            i += 9
    return out


def encode_xattrs(xattrs: dict[str, str] | None) -> str | None:
    """Xattrs as stored in the ``files`` table."""
    return None if not xattrs else json.dumps(xattrs, separators=(",", ":"))


def decode_xattrs(text: str | None) -> dict[str, str] | None:
    """Inverse of :func:`encode_xattrs`."""
    if not text:
        return None
    value: dict[str, str] = json.loads(text)
    return value


class ChecksumStore:
    """Per-machine cache of file metadata, chunk lists and folder trees (one writer at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version != _SCHEMA_VERSION:
                # An older layout: start over rather than migrate a cache.
                self._db.executescript("DROP TABLE IF EXISTS files; DROP TABLE IF EXISTS dirs;")
                self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            self._db.executescript(_SCHEMA)
            self._db.execute("SELECT count(*) FROM files LIMIT 1").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise KluisError(
                "SalChecksumStoreInitializationFailed", path=str(path), reason=str(exc)
            ) from None
        self._in_tx = False
        self._writes = 0
        self._file_rows: list[tuple[Any, ...]] = []
        self._dir_rows: list[tuple[bytes, bytes, bytes, bytes, bytes]] = []

    def lookup_dir(self, directory: bytes) -> dict[bytes, FileRow]:
        """Everything recorded for the files of one directory (one query per directory).

        Values are (dev, ino, size, mtime_ns, ctime_ns, encoded content, encoded xattrs);
        compare the first five with the file's stat, decode the rest with
        :func:`decode_content` and :func:`decode_xattrs`.
        """
        rows = self._db.execute(
            "SELECT name, dev, ino, size, mtime_ns, ctime_ns, content, xattrs FROM files WHERE dir = ?",
            (directory,),
        )
        return {row[0]: row[1:] for row in rows}

    def lookup(
        self, path: bytes, st_dev: int, st_ino: int, size: int, mtime_ns: int, ctime_ns: int
    ) -> list[bytes | int] | None:
        """The chunk list recorded for one unchanged file, else None."""
        self._flush()
        directory, _, name = path.rpartition(b"/")
        row = self._db.execute(
            "SELECT dev, ino, size, mtime_ns, ctime_ns, content FROM files WHERE dir = ? AND name = ?",
            (directory, name),
        ).fetchone()
        if row is None or tuple(row[:5]) != (st_dev, st_ino, size, mtime_ns, ctime_ns):
            return None
        return decode_content(row[5])

    def record(
        self,
        path: bytes,
        st_dev: int,
        st_ino: int,
        size: int,
        mtime_ns: int,
        ctime_ns: int,
        content: list[bytes | int],
        xattrs: dict[str, str] | None = None,
    ) -> None:
        """Remember a file's state, chunks and xattrs (written in batches)."""
        directory, _, name = path.rpartition(b"/")
        self._file_rows.append(
            (
                directory,
                name,
                st_dev,
                st_ino,
                size,
                mtime_ns,
                ctime_ns,
                encode_content(content),
                encode_xattrs(xattrs),
            )
        )
        if len(self._file_rows) >= _BATCH:
            self._flush()
            if self._writes >= _COMMIT_EVERY:
                self.commit()

    def dir_row(self, path: bytes) -> DirRow | None:
        """(entry signature, subfolder hash, tree id, file chunk ids) recorded for a folder."""
        row = self._db.execute("SELECT flat, kids, tree, refs FROM dirs WHERE path = ?", (path,)).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def dir_rows(self, top: bytes) -> dict[bytes, DirRow]:
        """Every folder row at or below ``top``, in one query (one query per folder cost more)."""
        if top == b"/":
            rows = self._db.execute("SELECT path, flat, kids, tree, refs FROM dirs")
        else:
            # Everything from "top/" up to "top0" ("0" follows "/"): exactly the paths below top.
            rows = self._db.execute(
                "SELECT path, flat, kids, tree, refs FROM dirs WHERE path = ? OR (path > ? AND path < ?)",
                (top, top + b"/", top + b"0"),
            )
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def file_dirs(self, top: bytes) -> set[bytes]:
        """The folders at or below ``top`` that have file rows (the others need no query)."""
        key = top.rstrip(b"/")
        if not key:
            rows = self._db.execute("SELECT DISTINCT dir FROM files")
        else:
            rows = self._db.execute(
                "SELECT DISTINCT dir FROM files WHERE dir = ? OR (dir > ? AND dir < ?)",
                (key, key + b"/", key + b"0"),
            )
        return {r[0] for r in rows}

    def record_dir(self, path: bytes, flat: bytes, kids: bytes, tree: bytes, refs: bytes) -> None:
        """Remember the tree built for a folder in the state ``flat`` + ``kids``."""
        self._dir_rows.append((path, flat, kids, tree, refs))
        if len(self._dir_rows) >= _BATCH:
            self._flush()
            if self._writes >= _COMMIT_EVERY:
                self.commit()

    def forget_dirs(self, paths: list[bytes]) -> None:
        """Drop folders that are gone (or left out) and the files recorded in them."""
        if not paths:
            return
        self._flush()
        self._begin()
        self._db.executemany("DELETE FROM dirs WHERE path = ?", [(p,) for p in paths])
        self._db.executemany("DELETE FROM files WHERE dir = ?", [(p,) for p in paths])

    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def _flush(self) -> None:
        """Write the batched rows (inside the open transaction)."""
        if not self._file_rows and not self._dir_rows:
            return
        self._begin()
        if self._file_rows:
            self._db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self._file_rows
            )
            self._writes += len(self._file_rows)
            self._file_rows = []
        if self._dir_rows:
            self._db.executemany("INSERT OR REPLACE INTO dirs VALUES (?, ?, ?, ?, ?)", self._dir_rows)
            self._writes += len(self._dir_rows)
            self._dir_rows = []

    def commit(self) -> None:
        """Make recorded entries durable."""
        self._flush()
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False
        self._writes = 0

    def get_meta(self, key: str) -> str | None:
        """A stored setting (e.g. the size of the last backup, for ETAs)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store a setting."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        """Commit and close."""
        self.commit()
        self._db.close()
