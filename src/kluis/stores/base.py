"""The storage contract every backend fulfils: put, get (with byte range), stat, list, delete.

Modelled on restic's backend interface: a store knows nothing about packs or
recovery points, only named immutable objects. Names are relative, slash
separated, and never contain ``..`` or empty parts. Writes are atomic: an
object is either fully visible or not at all.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

from kluis.catalog import KluisError


@dataclass(frozen=True)
class ObjectInfo:
    """What ``stat`` and ``list`` report about a stored object."""

    name: str
    size: int


def check_name(name: str) -> str:
    """Reject names that could escape the store's root or are ambiguous."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object name {name!r}")
    if "\x00" in name or "\\" in name:
        raise ValueError(f"invalid object name {name!r}")
    return name


class Store(abc.ABC):
    """Named, immutable objects. Implementations must be safe to call from several threads."""

    #: A URL that opens the same store again (without secrets).
    url: str
    #: Whether every call crosses a network (a round trip each), so that readers gain from
    #: keeping more reads in flight than the machine has cores. Wrappers pass it on.
    remote: bool = False

    @abc.abstractmethod
    def put(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` under ``name`` atomically, replacing any object of that name."""

    @abc.abstractmethod
    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read ``length`` bytes from ``offset`` (to the end when ``length`` is None).

        Raises KluisError StoreObjectNotFound when the object does not exist. A
        range past the end returns the bytes that exist (possibly none).
        """

    @abc.abstractmethod
    def stat(self, name: str) -> ObjectInfo:
        """Size of an object; StoreObjectNotFound when it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix``, in no particular order."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove an object. Removing a missing object is not an error."""

    def exists(self, name: str) -> bool:
        """Whether an object exists."""
        try:
            self.stat(name)
        except KluisError as exc:
            if exc.code == "StoreObjectNotFound":
                return False
            raise
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. The default has nothing to release."""

    def not_found(self, name: str) -> KluisError:
        """The catalog error for a missing object of this store."""
        return KluisError("StoreObjectNotFound", name=name, store=self.url)
