"""Directory listings (trees): one encrypted blob per directory, nodes sorted by name.

Names and link targets are file-system bytes, carried as ``str`` with the
``surrogateescape`` error handler so that names that are not UTF-8 survive a
round trip (JSON escapes the lone surrogates). A file's content is a list of
chunk ids (hex) and holes (an int: that many zero bytes that were not stored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kluis.catalog import KluisError

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
FIFO = "fifo"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
NODE_TYPES = frozenset({FILE, DIR, SYMLINK, HARDLINK, FIFO, CHARDEV, BLOCKDEV})

# Short keys keep a listing of 100k files small; the mapping is part of the format.
_KEYS = {
    "name": "n",
    "type": "t",
    "mode": "m",
    "uid": "u",
    "gid": "g",
    "user": "U",
    "group": "G",
    "mtime_ns": "mt",
    "ctime_ns": "ct",
    "atime_ns": "at",
    "size": "s",
    "content": "c",
    "subtree": "st",
    "target": "l",
    "rdev": "r",
    "xattrs": "x",
    "nlink": "k",
}
_FROM_KEYS = {v: k for k, v in _KEYS.items()}


@dataclass(slots=True)
class Node:
    """One entry of a directory with everything needed to recreate it."""

    name: str
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str | None = None
    group: str | None = None
    mtime_ns: int = 0
    ctime_ns: int = 0
    atime_ns: int = 0
    size: int = 0
    content: list[str | int] | None = None
    subtree: str | None = None
    target: str | None = None
    rdev: int | None = None
    xattrs: dict[str, str] | None = field(default=None)
    nlink: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Compact dict form; fields at their defaults are left out.

        Written out field by field: this runs for every file of every backup.
        """
        out: dict[str, Any] = {"n": self.name, "t": self.type}
        if self.mode:
            out["m"] = self.mode
        if self.uid:
            out["u"] = self.uid
        if self.gid:
            out["g"] = self.gid
        if self.user is not None:
            out["U"] = self.user
        if self.group is not None:
            out["G"] = self.group
        if self.mtime_ns:
            out["mt"] = self.mtime_ns
        if self.ctime_ns:
            out["ct"] = self.ctime_ns
        if self.atime_ns:
            out["at"] = self.atime_ns
        if self.size:
            out["s"] = self.size
        if self.content is not None:
            out["c"] = self.content
        if self.subtree is not None:
            out["st"] = self.subtree
        if self.target is not None:
            out["l"] = self.target
        if self.rdev is not None:
            out["r"] = self.rdev
        if self.xattrs is not None:
            out["x"] = self.xattrs
        if self.nlink is not None:
            out["k"] = self.nlink
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Node:
        """Inverse of :meth:`to_json`; raises ValueError on anything malformed."""
        kwargs = {_FROM_KEYS[k]: v for k, v in raw.items() if k in _FROM_KEYS}
        node = cls(**kwargs)
        if not isinstance(node.name, str) or node.type not in NODE_TYPES:
            raise ValueError(f"bad node name or type: {node.name!r} {node.type!r}")
        for attr in ("mode", "uid", "gid", "mtime_ns", "ctime_ns", "atime_ns", "size"):
            if not isinstance(getattr(node, attr), int):
                raise ValueError(f"{attr} is not an integer")
        if node.content is not None and not all(isinstance(c, str | int) for c in node.content):
            raise ValueError("bad content list")
        return node

    def chunk_ids(self) -> list[bytes]:
        """The stored chunks of a file (holes left out)."""
        return [bytes.fromhex(c) for c in self.content or () if isinstance(c, str)]


def encode_tree(nodes: list[Node]) -> bytes:
    """A tree blob's plaintext: nodes sorted by name, deterministic bytes (so equal dirs dedupe)."""
    nodes = sorted(nodes, key=lambda n: n.name)
    return json.dumps({"v": 1, "nodes": [n.to_json() for n in nodes]}, separators=(",", ":")).encode()


def decode_tree(data: bytes, *, blob: str = "?", point: str = "?") -> list[Node]:
    """Nodes of a tree blob; RepoTreeCorrupt when it is not a valid listing."""
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("v") != 1 or not isinstance(raw.get("nodes"), list):
            raise ValueError("not a version 1 tree")
        return [Node.from_json(n) for n in raw["nodes"]]
    except (ValueError, TypeError, KeyError) as exc:
        raise KluisError("RepoTreeCorrupt", blob=blob, point=point, reason=str(exc)) from None


def fs_name(name: bytes) -> str:
    """A file-system name as carried in trees."""
    return name.decode("utf-8", "surrogateescape")


def os_name(name: str) -> bytes:
    """Inverse of :func:`fs_name`."""
    return name.encode("utf-8", "surrogateescape")
