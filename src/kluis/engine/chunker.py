"""Content-defined chunking of files (FastCDC, seeded per repository).

Chunks average about 1 MiB. The gear table is XORed with the repository's secret
chunker seed so that chunk boundaries, and therefore chunk sizes, do not reveal
which well-known files a repository holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pyfastcdc import FastCDC

MIN_SIZE = 256 * 1024
# pyfastcdc's real average is about avg_size + min_size (cut-point skipping): ~1 MiB.
AVG_SIZE = 768 * 1024
MAX_SIZE = 4 * 1024 * 1024


def make_chunker(seed: int) -> FastCDC:
    """A chunker for a repository's seed. Not thread-safe: one per thread."""
    return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=1, seed=seed)


def iter_chunks(
    chunker: FastCDC,
    readinto: Callable[[memoryview], int],
    buf: bytearray,
) -> Iterator[memoryview]:
    """Chunks of a stream, read through one reused buffer.

    ``buf`` must hold at least two maximum-size chunks. Each yielded view is valid
    only until the next one is requested. Boundaries equal those of chunking the
    whole stream at once, because a cut is only taken while at least a maximum
    chunk of data (or the end of the stream) lies ahead of it.
    """
    if len(buf) < 2 * MAX_SIZE:
        raise ValueError("buffer too small for streaming chunking")
    view = memoryview(buf)
    start = end = 0
    eof = False
    while True:
        if not eof and end - start < MAX_SIZE:
            if start:
                view[: end - start] = view[start:end]
                end -= start
                start = 0
            while end < len(buf):
                n = readinto(view[end:])
                if not n:
                    eof = True
                    break
                end += n
        if start == end:
            return
        for chunk in chunker.cut_buf(view[start:end]):
            if not eof and end - (start + chunk.offset) < MAX_SIZE:
                # Too little data ahead to trust this cut: refill first.
                start += chunk.offset
                break
            yield chunk.data
        else:
            start = end
