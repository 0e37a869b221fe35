"""Reading blobs for a restore: pack ranges planned from the files about to be written.

The restore's main thread knows which files come next long before a worker writes
them. For every batch it hands to a worker it first *plans* the blobs that batch
needs (:meth:`PlannedReader.plan`):

- blobs of one pack that lie close together (gaps of at most ``gap`` bytes) share one
  range, and a range that no fetch has started yet grows while later batches need the
  bytes around it, up to ``max_range``;
- fetch threads read ranges in the order they were planned, ahead of the workers, while
  the bytes held stay under ``budget``. A range is fetched once it cannot grow any more,
  or once enough plan has piled up behind it (``lookahead``);
- a worker that needs a range no fetch has started reads it itself instead of waiting
  (so nothing waits for the budget, and nothing can deadlock on it);
- a range is dropped when every planned read of its blobs has happened, or when the
  batches that planned them have ended (a file that failed half-way releases the rest).

So every stored byte a restore needs is read once in the usual case, in a few large
requests, and the round trips to a remote store overlap the decoding. The reader it
replaced cut packs into fixed segments from the first blob it missed and kept eight of
them: through a vault it read 3.1 GB to restore a 1.65 GB repository, because the blobs
of one folder sit in two packs (one per backup thread) and deduplicated blobs point back
into old packs, both of which pushed segments out before they were used up.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

from kluis.engine.format import IndexEntry, pack_name
from kluis.stores import Store

GAP = 256 * 1024
MAX_RANGE = 8 * 1024 * 1024
LOOKAHEAD = 16 * 1024 * 1024

_QUEUED, _STARTED, _DONE, _FAILED, _DROPPED = range(5)


class _Range:
    """Bytes ``start`` .. ``end`` of one pack: planned, being read, read, or given up."""

    __slots__ = ("data", "end", "pack", "planned_at", "start", "state", "uses")

    def __init__(self, pack: bytes, start: int, end: int, planned_at: int) -> None:
        self.pack = pack
        self.start = start
        self.end = end
        self.planned_at = planned_at  # bytes planned before this range (see _ripe)
        self.state = _QUEUED
        self.uses = 0  # planned reads not yet made or released
        self.data: bytes = b""

    @property
    def size(self) -> int:
        return self.end - self.start

    def covers(self, offset: int, end: int) -> bool:
        return self.start <= offset and end <= self.end


class _Slot:
    """One blob of a batch: the range planned to hold it and the planned reads left."""

    __slots__ = ("left", "length", "rng")

    def __init__(self, rng: _Range, length: int) -> None:
        self.rng = rng
        self.length = length
        self.left = 0


class Ticket:
    """The planned reads of one batch; hand it back to :meth:`PlannedReader.release`."""

    __slots__ = ("reads",)

    def __init__(self) -> None:
        self.reads: dict[tuple[bytes, int], _Slot] = {}  # by (pack, offset) of the blob


class PlannedReader:
    """The stored bytes of blobs, read in ranges planned ahead of the workers.

    Thread-safe: one thread plans, any number read. Call :meth:`finish_planning` when
    nothing more will be planned (the last ranges are then fetched without waiting for
    more plan) and :meth:`close` at the end (it stops the fetch threads).
    """

    def __init__(
        self,
        store: Store,
        *,
        fetchers: int = 1,
        budget: int = 64 * 1024 * 1024,
        gap: int = GAP,
        max_range: int = MAX_RANGE,
        lookahead: int = LOOKAHEAD,
    ) -> None:
        self.store = store
        self.budget = budget
        self.gap = gap
        self.max_range = max_range
        self.lookahead = lookahead
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # readers: a range's bytes arrived
        self._work = threading.Condition(lock)  # fetch threads: a range may be ripe, or fit
        self._live: dict[bytes, list[_Range]] = {}  # pack -> its ranges not dropped yet
        self._open: dict[bytes, _Range] = {}  # pack -> the range that may still grow
        self._queue: deque[_Range] = deque()  # planned order
        self._planned = 0  # bytes planned so far
        self._held = 0  # bytes of ranges being read or read and not dropped
        self._ahead = 0  # stored bytes of planned reads not made (or released) yet
        self._planning = True
        self._closed = False
        self._threads = [
            threading.Thread(target=self._fetch_loop, name=f"kluis-restore-fetch-{i}", daemon=True)
            for i in range(fetchers)
        ]
        for t in self._threads:
            t.start()

    # -- planning (the restore's main thread) --------------------------------------------

    def plan(self, entries: Iterable[IndexEntry]) -> Ticket:
        """Plan the reads of ``entries`` (one batch's blobs, in the order they will be read)."""
        ticket = Ticket()
        reads = ticket.reads
        with self._cond:
            for e in entries:
                key = (e.pack, e.offset)
                slot = reads.get(key)
                if slot is None:
                    slot = reads[key] = _Slot(self._place(e), e.length)
                slot.left += 1
                slot.rng.uses += 1
                self._ahead += e.length
            if self._next() is not None:
                self._work.notify()
        return ticket

    def _place(self, e: IndexEntry) -> _Range:
        """The range that will hold blob ``e``: a live one, a grown open one, or a new one."""
        offset, end = e.offset, e.offset + e.length
        for rng in self._live.get(e.pack, ()):
            if rng.covers(offset, end):
                return rng
        growing = self._open.get(e.pack)
        if growing is not None and growing.state == _QUEUED:
            start, stop = min(growing.start, offset), max(growing.end, end)
            near = offset <= growing.end + self.gap and end + self.gap >= growing.start
            if near and stop - start <= self.max_range:
                self._planned += (stop - start) - growing.size
                growing.start, growing.end = start, stop
                return growing
        rng = _Range(e.pack, offset, end, self._planned)
        self._planned += e.length
        self._live.setdefault(e.pack, []).append(rng)
        self._open[e.pack] = rng
        self._queue.append(rng)
        return rng

    def finish_planning(self) -> None:
        """Nothing more will be planned: fetch what is queued without waiting for more."""
        with self._cond:
            self._planning = False
            self._work.notify_all()

    # -- reading (the workers) -----------------------------------------------------------

    def read(self, entry: IndexEntry, ticket: Ticket | None = None) -> bytes | memoryview:
        """The stored (encrypted) bytes of one blob, from its planned range when it has one."""
        key = (entry.pack, entry.offset)
        with self._cond:
            slot = ticket.reads.get(key) if ticket is not None else None
            if slot is not None and slot.left == 0:
                slot = None  # read more often than planned: its range may be gone already
            if slot is not None:
                rng = slot.rng
                if rng.state == _QUEUED:
                    self._start(rng)  # nobody has started it: read it here rather than wait
                    steal = True
                else:
                    steal = False
                    while rng.state == _STARTED:
                        self._cond.wait()
        if slot is None:
            return self.store.get(pack_name(entry.pack), entry.offset, entry.length)
        if steal:
            self._fill(rng)
        try:
            if rng.state != _DONE:
                # The range's read failed (or it was dropped): read the blob alone, so that
                # the error, if it persists, surfaces here with this blob's name.
                return self.store.get(pack_name(entry.pack), entry.offset, entry.length)
            rel = entry.offset - rng.start
            # A pack shorter than the index says gives a short view; decoding refuses it.
            return memoryview(rng.data)[rel : rel + entry.length]
        finally:
            with self._cond:
                if slot.left > 0:
                    slot.left -= 1
                    self._ahead -= slot.length
                    self._unuse(rng, 1)

    def release(self, ticket: Ticket) -> None:
        """A batch ended: drop its planned reads that never happened."""
        with self._cond:
            for slot in ticket.reads.values():
                if slot.left:
                    left, slot.left = slot.left, 0
                    self._ahead -= left * slot.length
                    self._unuse(slot.rng, left)
            ticket.reads.clear()

    def close(self) -> None:
        """Stop the fetch threads (a read under way finishes)."""
        with self._cond:
            self._closed = True
            self._work.notify_all()
        for t in self._threads:
            t.join()

    @property
    def ahead(self) -> int:
        """Stored bytes of the planned reads that have not happened yet: how far the plan leads."""
        return self._ahead

    @property
    def held(self) -> int:
        """Bytes of ranges being read or read and still needed."""
        return self._held

    # -- ranges (all with the condition's lock held, except _fill) -----------------------

    def _start(self, rng: _Range) -> None:
        rng.state = _STARTED
        self._held += rng.size
        if self._open.get(rng.pack) is rng:
            del self._open[rng.pack]

    def _unuse(self, rng: _Range, n: int) -> None:
        rng.uses -= n
        if rng.uses > 0:
            return
        live = self._live.get(rng.pack)
        if live is not None and rng in live:
            live.remove(rng)
            if not live:
                del self._live[rng.pack]
        if self._open.get(rng.pack) is rng:
            del self._open[rng.pack]
        if rng.state == _QUEUED:
            rng.state = _DROPPED
        elif rng.state != _STARTED:
            # A range still being read is let go by _fill when its bytes arrive.
            self._held -= rng.size
            rng.data = b""
            self._work.notify()

    def _fill(self, rng: _Range) -> None:
        """Read a started range's bytes (without the lock); a failure marks it failed."""
        data: bytes | None = None
        try:
            data = self.store.get(pack_name(rng.pack), rng.start, rng.size)
        except Exception:
            pass  # its readers read their blobs alone, and meet the error there
        finally:
            with self._cond:
                if data is None:
                    rng.state = _FAILED
                else:
                    rng.data = data
                    rng.state = _DONE
                if rng.uses <= 0:  # every planned read was released meanwhile
                    self._held -= rng.size
                    rng.data = b""
                    self._work.notify()
                self._cond.notify_all()

    def _ripe(self, rng: _Range) -> bool:
        """Whether a queued range should be fetched now rather than left to grow."""
        return (
            not self._planning
            or self._open.get(rng.pack) is not rng
            or rng.size + self.gap >= self.max_range
            or self._planned - rng.planned_at >= self.lookahead
        )

    def _next(self) -> _Range | None:
        """The range to fetch next: the oldest one queued, once it is ripe and fits the budget.

        Strictly in plan order, which is the order the workers need them in; so only the
        head of the queue is ever looked at.
        """
        queue = self._queue
        while queue and queue[0].state != _QUEUED:
            queue.popleft()
        if not queue:
            return None
        rng = queue[0]
        if not self._ripe(rng) or (self._held and self._held + rng.size > self.budget):
            return None
        return rng

    def _fetch_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    rng = self._next()
                    if rng is not None:
                        self._start(rng)
                        break
                    self._work.wait()
            self._fill(rng)
