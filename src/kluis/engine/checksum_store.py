"""The checksum store: what each file looked like at the last backup, and its chunks.

A SQLite database in the scratch folder, keyed by path. When a file's device,
inode, size, mtime and ctime are unchanged, its chunk list is reused and the
file is neither read nor hashed. The store is only a cache: losing it costs one
slower backup, never data.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

from kluis.catalog import KluisError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    dir BLOB NOT NULL, name BLOB NOT NULL,
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    content BLOB NOT NULL,
    PRIMARY KEY (dir, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_HOLE = struct.Struct("<Q")


def encode_content(content: list[str | int]) -> bytes:
    """Chunk list to bytes: 0x00 + 32-byte id, or 0x01 + 8-byte hole length."""
    out = bytearray()
    for c in content:
        if isinstance(c, str):
            out += b"\x00" + bytes.fromhex(c)
        else:
            out += b"\x01" + _HOLE.pack(c)
    return bytes(out)


def decode_content(data: bytes) -> list[str | int]:
    """Inverse of :func:`encode_content`."""
    out: list[str | int] = []
    i = 0
    while i < len(data):
        if data[i] == 0:
            out.append(data[i + 1 : i + 33].hex())
            i += 33
        else:
            out.append(_HOLE.unpack_from(data, i + 1)[0])
            i += 9
    return out


class ChecksumStore:
    """Per-machine cache of file metadata and chunk lists (one writer at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("SELECT count(*) FROM files LIMIT 1").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise KluisError(
                "SalChecksumStoreInitializationFailed", path=str(path), reason=str(exc)
            ) from None
        self._in_tx = False
        self._writes = 0

    def lookup_dir(self, directory: bytes) -> dict[bytes, tuple[int, int, int, int, int, bytes]]:
        """Everything recorded for the files of one directory (one query per directory).

        Values are (dev, ino, size, mtime_ns, ctime_ns, encoded content); compare the
        first five with the file's stat and decode the content with :func:`decode_content`.
        """
        rows = self._db.execute(
            "SELECT name, dev, ino, size, mtime_ns, ctime_ns, content FROM files WHERE dir = ?", (directory,)
        )
        return {row[0]: tuple(row[1:]) for row in rows}

    def lookup(
        self, path: bytes, st_dev: int, st_ino: int, size: int, mtime_ns: int, ctime_ns: int
    ) -> list[str | int] | None:
        """The chunk list recorded for one unchanged file, else None."""
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
        content: list[str | int],
    ) -> None:
        """Remember a file's state and chunks (batched in a transaction)."""
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True
        directory, _, name = path.rpartition(b"/")
        self._db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (directory, name, st_dev, st_ino, size, mtime_ns, ctime_ns, encode_content(content)),
        )
        self._writes += 1
        if self._writes >= 5000:
            self.commit()

    def commit(self) -> None:
        """Make recorded entries durable."""
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
