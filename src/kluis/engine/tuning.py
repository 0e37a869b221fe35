"""Process-wide allocator and garbage-collector tuning for the hot paths.

glibc serves allocations above its mmap threshold with fresh mappings, which the
kernel must zero-fill page by page. Two profiles:

- ``default`` (restore, verify, disk images): every blob's plaintext is a fresh buffer
  of up to a few MiB, so the threshold is raised to 32 MiB and such buffers stay on the
  heap, where freed memory is reused.
- ``backup``: buffers are reused on the hot path; the only fresh chunk-sized ones are
  zstd outputs (at most a maximum chunk plus zstd's margin). With the 32 MiB threshold,
  fragmentation between the threads' heaps kept about 15 MiB more resident in a backup
  of /usr/lib + /usr/share (226 MiB against 211 MiB). A fixed threshold just above the
  largest zstd output keeps every chunk buffer on the heap but gives anything larger
  back when freed. Lower thresholds (1-2 MiB) saved a few MiB more but mapped and
  zero-filled about half of all zstd outputs: 17% more CPU time in that backup.

Both profiles also keep one heap for all threads (``M_ARENA_MAX`` 1). glibc gives
threads heaps of their own ("arenas") and does not move free memory between them: in a
restore of /usr/lib + /usr/share the workers and the read-ahead thread each held freed
segments and plaintexts, and the restore peaked at 225 to 239 MiB. With one arena it
peaked at 171 to 188 MiB, in the same time within the noise (median 24.6 s against
24.4 s, five cold-cache restores each). Backups (204 to 208 against 210 MiB) and
verify (about 185 MiB either way) kept their times too. The setting applies to heaps
created after it, so it is applied before a job starts its threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import threading
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# (mmap threshold, trim threshold) per profile; 128 KiB is glibc's own trim default.
_PROFILES = {
    "default": (32 * 1024 * 1024, 128 * 1024 * 1024),
    "backup": (4 * 1024 * 1024 + 256 * 1024, 128 * 1024),
}


@lru_cache(maxsize=1)
def _mallopt() -> Any:
    """glibc's mallopt, or None (looked up once: find_library is slow)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt


def tune_allocator(profile: str = "default") -> bool:
    """Apply a profile (cheap; applied on every call, since a long-lived agent switches
    between backup and restore); False where the C library is not glibc."""
    if os.environ.get("KLUIS_MALLOPT", "1") == "0":
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mmap_threshold, trim_threshold = _PROFILES[profile]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    ok = bool(mallopt(_M_ARENA_MAX, 1)) and ok
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and ok


# While a job runs: a young generation ten times CPython's default (700), and full
# collections rarer. Measured on one cold restore of /usr/lib + /usr/share (direct, 106k
# files): 982 collections and 1.0 s with the interpreter lock held by default; 165 and
# 0.35 to 0.39 s with these and the freeze.
_GC_THRESHOLD = (7_000, 20, 20)
_gc_lock = threading.Lock()
_gc_jobs = 0
_gc_saved: tuple[int, int, int] | None = None
_gc_froze = False


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Run a job with fewer and cheaper cyclic garbage collections.

    A restore's walk makes hundreds of thousands of short-lived objects (listing nodes,
    index entries, futures). With CPython's default thresholds the collector ran every 700
    allocations, and each full collection walked every object the process held, with the
    interpreter lock held and the restore's workers waiting. Objects that exist when the
    job starts are frozen (never examined again) and thawed when it ends, so garbage from
    before is still collected later; the collector's thresholds are raised while any job
    runs. Jobs may overlap in the agent: the last one out puts both back. A process that
    froze objects itself (the vault server) keeps its own freeze: thawing would undo it.
    """
    global _gc_jobs, _gc_saved, _gc_froze
    with _gc_lock:
        if _gc_jobs == 0:
            _gc_saved = gc.get_threshold()  # type: ignore[assignment]
            _gc_froze = gc.get_freeze_count() == 0
            if _gc_froze:
                gc.freeze()
            gc.set_threshold(*_GC_THRESHOLD)
        _gc_jobs += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_jobs -= 1
            if _gc_jobs == 0:
                if _gc_saved is not None:
                    gc.set_threshold(*_gc_saved)
                if _gc_froze:
                    gc.unfreeze()
