"""Writing packs (many blobs, one immutable object) and reading blobs back out of them.

Each backup thread owns one PackWriter with one buffer that is reused for every
pack it writes: blobs are encrypted straight into that buffer, so the hot path
makes no large allocations.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from kluis.engine.blobs import BlobCodec
from kluis.engine.format import (
    BLOB_OVERHEAD,
    BlobType,
    IndexEntry,
    encode_pack_trailer,
    object_id,
    pack_name,
    pack_trailer_size,
)
from kluis.stores import Store

DEFAULT_PACK_SIZE = 16 * 1024 * 1024
# Reused pack buffers are allocated in steps of this size (see pack_buffer_size).
PACK_BUFFER_STEP = 8 * 1024 * 1024


def pack_buffer_size(size: int) -> int:
    """How large a reusable buffer to allocate for a pack of ``size`` bytes.

    Packs vary in size (the target plus at most one large blob: 16 to about 20 MiB). A
    buffer of exactly one pack's size is too small for the next, larger pack, so a pool
    of exact-size buffers kept allocating: each new buffer's pages are faulted in and
    zero-filled on first use, which made copying a 17 MiB pack into it take about 26 ms
    instead of 3. Rounded up to whole steps, one buffer serves every pack of a backup.
    Small objects (index files, points) get what they need.
    """
    if size <= PACK_BUFFER_STEP:
        return size
    return -(-size // PACK_BUFFER_STEP) * PACK_BUFFER_STEP


class PackWriter:
    """Collects encoded blobs into packs of about ``target_size`` bytes and uploads them.

    ``on_uploaded`` is called with the index entries of every pack after it is stored,
    which is the moment its blobs may be referenced.
    """

    def __init__(
        self,
        store: Store,
        codec: BlobCodec,
        on_uploaded: Callable[[list[IndexEntry]], None],
        target_size: int = DEFAULT_PACK_SIZE,
        max_blob: int = 4 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.codec = codec
        self.on_uploaded = on_uploaded
        self.target_size = target_size
        # Start small (a writer that only ever stores directory listings stays small) and grow
        # to the full size once; the buffer is then reused for every pack.
        self._full = target_size + max_blob + BLOB_OVERHEAD + 64 * 1024
        self._buf = bytearray(min(self._full, 2 * 1024 * 1024))
        self._view = memoryview(self._buf)
        self._pos = 0
        self._entries: list[tuple[bytes, int, int, int, int]] = []
        self.bytes_written = 0
        self.packs_written = 0

    def add(self, blob_id: bytes, blob_type: BlobType, data: bytes | bytearray | memoryview) -> int:
        """Encode one blob into the current pack; returns its stored size."""
        bound = self.codec.encoded_size_bound(len(data))
        room = len(self._buf) - self._pos - pack_trailer_size(len(self._entries) + 1)
        if bound > room and len(self._buf) < self._full:
            self._grow(self._full)
            room = len(self._buf) - self._pos - pack_trailer_size(len(self._entries) + 1)
        if bound > room and self._entries:
            self.flush()
            room = len(self._buf) - pack_trailer_size(1)
        if bound > room:
            # A blob larger than the buffer was built for: grow once, keep the bigger buffer.
            self._grow(len(self._buf) + bound - room)
        n, flags = self.codec.encode_into(blob_id, blob_type, data, self._view[self._pos : self._pos + bound])
        self._entries.append((blob_id, int(blob_type), flags, n, len(data)))
        self._pos += n
        if self._pos >= self.target_size:
            self.flush()
        return n

    def _grow(self, size: int) -> None:
        self._view.release()
        self._buf.extend(bytes(size - len(self._buf)))
        self._view = memoryview(self._buf)

    @property
    def pending(self) -> int:
        """Blobs waiting in the unfinished pack."""
        return len(self._entries)

    def flush(self) -> None:
        """Finish the current pack (table, footer), store it, report its entries."""
        if not self._entries:
            return
        trailer = encode_pack_trailer(self._entries)
        end = self._pos + len(trailer)
        if end > len(self._buf):
            self._grow(end)
        self._view[self._pos : end] = trailer
        data = self._view[:end]
        pack_id = object_id(data)
        self.store.put(pack_name(pack_id), data)
        entries: list[IndexEntry] = []
        offset = 0
        for blob_id, btype, flags, length, raw in self._entries:
            entries.append(IndexEntry(blob_id, pack_id, btype, flags, offset, length, raw))
            offset += length
        self.bytes_written += end
        self.packs_written += 1
        self._entries = []
        self._pos = 0
        self.on_uploaded(entries)


class PackReader:
    """Reads blobs' bytes from packs, with a small read-ahead window cache.

    Restore reads blobs in nearly the order backup wrote them, so fetching a
    window of a pack at a time turns thousands of small reads into a few large ones.
    """

    def __init__(self, store: Store, window: int = 4 * 1024 * 1024, windows: int = 4) -> None:
        self.store = store
        self.window = window
        self.max_windows = windows
        self._cache: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, entry: IndexEntry) -> bytes | memoryview:
        """The stored (encrypted) bytes of one blob."""
        if entry.length > self.window // 2:
            return self.store.get(pack_name(entry.pack), entry.offset, entry.length)
        start = entry.offset - entry.offset % (self.window // 2)
        key = (entry.pack, start)
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
        if data is None:
            data = self.store.get(pack_name(entry.pack), start, self.window)
            with self._lock:
                self._cache[key] = data
                while len(self._cache) > self.max_windows:
                    self._cache.popitem(last=False)
        rel = entry.offset - start
        if rel + entry.length > len(data):
            # The pack is shorter than its index claims: hand back what exists, decode will refuse it.
            return memoryview(data)[rel:]
        return memoryview(data)[rel : rel + entry.length]
