"""Process-wide allocator tuning for the hot paths.

glibc serves allocations above its mmap threshold with fresh mappings, which
the kernel must zero-fill page by page; on small VMs that makes every 1 MiB
buffer cost more than the work done on it. Raising the threshold keeps such
buffers on the heap, where freed memory is reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Apply the tuning once per process; False where the C library is not glibc."""
    import os

    if os.environ.get("KLUIS_MALLOPT", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024))
    ok = bool(mallopt(_M_TRIM_THRESHOLD, 128 * 1024 * 1024)) and ok
    return ok
