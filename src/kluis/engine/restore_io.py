"""Reading blobs for a restore: pack segments shared by all restore workers.

Restore asks for blobs in nearly the order the backup wrote them. Reading a
segment of a pack that starts at the first blob not yet cached, and keeping a few
such segments, turns many small reads into few large ones without reading any
byte twice on a sequential pass. When two workers miss on the same region at
once, the second waits for the first one's read instead of issuing its own.
"""

from __future__ import annotations

import threading

from kluis.engine.format import IndexEntry, pack_name
from kluis.stores import Store

DEFAULT_SEGMENT = 4 * 1024 * 1024


class _Segment:
    """Bytes ``start`` .. ``start + len(data)`` of one pack, or a read still running."""

    __slots__ = ("data", "done", "end", "pack", "start")

    def __init__(self, pack: bytes, start: int, end: int) -> None:
        self.pack = pack
        self.start = start
        self.end = end
        self.data: bytes = b""
        self.done = threading.Event()

    def covers(self, pack: bytes, offset: int, end: int) -> bool:
        return self.pack == pack and self.start <= offset and end <= self.end


class SegmentReader:
    """The stored bytes of blobs, read through a small shared cache of pack segments.

    Thread-safe. Segments are plain ``bytes`` from the store, so a view handed out
    stays valid however the cache changes afterwards.
    """

    def __init__(self, store: Store, segment: int = DEFAULT_SEGMENT, keep: int = 8) -> None:
        self.store = store
        self.segment = segment
        self.keep = keep
        self._segments: list[_Segment] = []  # most recently used last
        self._lock = threading.Lock()

    def read(self, entry: IndexEntry) -> bytes | memoryview:
        """The stored (encrypted) bytes of one blob."""
        offset, end = entry.offset, entry.offset + entry.length
        if entry.length >= self.segment // 2:
            # Big blobs are read on their own: caching them would only push out useful segments.
            return self.store.get(pack_name(entry.pack), offset, entry.length)
        with self._lock:
            found: _Segment | None = None
            for seg in reversed(self._segments):
                if seg.covers(entry.pack, offset, end):
                    found = seg
                    break
            if found is not None:
                self._segments.remove(found)
                self._segments.append(found)
                owner = False
            else:
                found = _Segment(entry.pack, offset, offset + self.segment)
                self._segments.append(found)
                if len(self._segments) > self.keep:
                    del self._segments[0]
                owner = True
        if owner:
            try:
                found.data = self.store.get(pack_name(entry.pack), offset, self.segment)
            except BaseException:
                with self._lock:
                    if found in self._segments:
                        self._segments.remove(found)
                found.done.set()
                raise
            # A short read (end of the pack) covers less than promised.
            found.end = offset + len(found.data)
            found.done.set()
        else:
            found.done.wait()
            if not found.data and found.end > found.start:
                # The owner's read failed; read this blob on our own (errors surface here).
                return self.store.get(pack_name(entry.pack), offset, entry.length)
        rel = offset - found.start
        if rel + entry.length > len(found.data):
            # The pack is shorter than the index says: hand back what exists, decoding refuses it.
            return memoryview(found.data)[rel:]
        return memoryview(found.data)[rel : rel + entry.length]
