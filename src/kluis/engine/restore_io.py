"""Reading blobs for a restore: pack segments shared by all restore workers.

Restore asks for blobs in nearly the order the backup wrote them. Reading a
segment of a pack that starts at the first blob not yet cached, and keeping a few
such segments, turns many small reads into few large ones without reading any
byte twice on a sequential pass. When two workers miss on the same region at
once, the second waits for the first one's read instead of issuing its own.

Once reads have moved past the middle of a segment, the next segment of the same
pack is read ahead by a thread of its own, so the workers decode one segment
while the next one travels (through a vault, a round trip per segment). A blob
that spans the border of two such adjacent segments is put together from both.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from kluis.engine.format import IndexEntry, pack_name
from kluis.stores import Store

DEFAULT_SEGMENT = 4 * 1024 * 1024


class _Segment:
    """Bytes ``start`` .. ``end`` of one pack, or a read still running.

    ``end`` is the promised end until the read finishes, then the real one (a short
    read at the end of the pack covers less).
    """

    __slots__ = ("ahead", "data", "done", "end", "failed", "pack", "start")

    def __init__(self, pack: bytes, start: int, end: int) -> None:
        self.pack = pack
        self.start = start
        self.end = end
        self.data: bytes = b""
        self.done = threading.Event()
        self.failed = False
        self.ahead = False  # the next segment was queued (or is known not to exist)

    def covers(self, pack: bytes, offset: int, end: int) -> bool:
        return self.pack == pack and self.start <= offset and end <= self.end

    def holds_start(self, pack: bytes, offset: int) -> bool:
        return self.pack == pack and self.start <= offset < self.end


class SegmentReader:
    """The stored bytes of blobs, read through a small shared cache of pack segments.

    Thread-safe. Segments are plain ``bytes`` from the store, so a view handed out
    stays valid however the cache changes afterwards. Call :meth:`close` when done
    (it stops the read-ahead thread).
    """

    def __init__(
        self, store: Store, segment: int = DEFAULT_SEGMENT, keep: int = 8, read_ahead: bool = True
    ) -> None:
        self.store = store
        self.segment = segment
        self.keep = keep
        self._segments: list[_Segment] = []  # most recently used last
        self._lock = threading.Lock()
        self._ahead = ThreadPoolExecutor(1, thread_name_prefix="kluis-read-ahead") if read_ahead else None

    def close(self) -> None:
        """Stop reading ahead (a read under way finishes)."""
        if self._ahead is not None:
            self._ahead.shutdown(wait=True, cancel_futures=True)

    def _add(self, seg: _Segment) -> None:
        self._segments.append(seg)
        if len(self._segments) > self.keep:
            del self._segments[0]

    def _touch(self, seg: _Segment) -> None:
        if seg in self._segments:
            self._segments.remove(seg)
            self._segments.append(seg)

    def _fill(self, seg: _Segment) -> None:
        """Read a segment's bytes; on failure drop it so that readers read on their own."""
        try:
            seg.data = self.store.get(pack_name(seg.pack), seg.start, seg.end - seg.start)
        except BaseException:
            seg.failed = True
            with self._lock:
                if seg in self._segments:
                    self._segments.remove(seg)
            seg.done.set()
            raise
        seg.end = seg.start + len(seg.data)
        seg.done.set()

    def _fill_quietly(self, seg: _Segment) -> None:
        try:
            self._fill(seg)
        except Exception:  # read ahead only: the reader that needs the segment reads again
            pass

    def _read_ahead(self, seg: _Segment, offset: int) -> None:
        """Queue the segment after ``seg`` once reads have passed its middle."""
        if self._ahead is None or seg.ahead or offset - seg.start < self.segment // 2:
            return
        if len(seg.data) < self.segment:
            seg.ahead = True  # a short read: the pack ends inside this segment
            return
        with self._lock:
            if seg.ahead:
                return
            seg.ahead = True
            if any(s.holds_start(seg.pack, seg.end) for s in self._segments):
                return
            nxt = _Segment(seg.pack, seg.end, seg.end + self.segment)
            self._add(nxt)
        try:
            self._ahead.submit(self._fill_quietly, nxt)
        except RuntimeError:  # closed: the reader that needs it reads it
            with self._lock:
                if nxt in self._segments:
                    self._segments.remove(nxt)
            nxt.failed = True
            nxt.done.set()

    def read(self, entry: IndexEntry) -> bytes | memoryview:
        """The stored (encrypted) bytes of one blob."""
        offset, end = entry.offset, entry.offset + entry.length
        if entry.length >= self.segment // 2:
            # Big blobs are read on their own: caching them would only push out useful segments.
            return self.store.get(pack_name(entry.pack), offset, entry.length)
        head: _Segment | None = None
        tail: _Segment | None = None
        with self._lock:
            found: _Segment | None = None
            for seg in reversed(self._segments):
                if seg.covers(entry.pack, offset, end):
                    found = seg
                    break
            if found is None:
                # Across the border of two adjacent segments (a read-ahead one follows)?
                head = next((s for s in reversed(self._segments) if s.holds_start(entry.pack, offset)), None)
                if head is not None:
                    tail = next((s for s in self._segments if s.holds_start(entry.pack, head.end)), None)
                if head is not None and tail is not None:
                    self._touch(head)
                    self._touch(tail)
            owner = False
            if found is not None:
                self._touch(found)
            elif tail is None:
                found = _Segment(entry.pack, offset, offset + self.segment)
                self._add(found)
                owner = True
        if found is None:
            assert head is not None and tail is not None
            return self._across(entry, head, tail)
        if owner:
            self._fill(found)
        else:
            found.done.wait()
            if found.failed:
                # The owner's read failed; read this blob on our own (errors surface here).
                return self.store.get(pack_name(entry.pack), offset, entry.length)
        self._read_ahead(found, offset)
        rel = offset - found.start
        if rel + entry.length > len(found.data):
            # The pack is shorter than the index says: hand back what exists, decoding refuses it.
            return memoryview(found.data)[rel:]
        return memoryview(found.data)[rel : rel + entry.length]

    def _across(self, entry: IndexEntry, head: _Segment, tail: _Segment) -> bytes | memoryview:
        """A blob that starts in ``head`` and ends in the segment after it."""
        head.done.wait()
        tail.done.wait()
        offset, end = entry.offset, entry.offset + entry.length
        if head.failed or tail.failed or head.end != tail.start or end > tail.end:
            return self.store.get(pack_name(entry.pack), offset, entry.length)
        self._read_ahead(tail, tail.start + self.segment // 2)
        first = memoryview(head.data)[offset - head.start :]
        return b"".join((first, memoryview(tail.data)[: end - tail.start]))
