"""Handing freed CPU memory back to the operating system between sweep chunks.

On a CPU every tensor comes from the C library's allocator. glibc keeps freed heap memory for
reuse instead of returning it, and a long answer's sweep (one backward pass per answer token,
interleaved with the sweep's blocks, which grow with the causal block n) leaves freed pieces it
cannot reuse: at 2 layers and 512 answer tokens the process grew 91 MB (4 heads) to ~180 MB
(28 heads) over what its live tensors ever needed (`benchmarks/bench_long_answer.py --probe`
against a full run; the gap vanished under ``MALLOC_MMAP_THRESHOLD_=65536``). `trim_heap`
returns those pages (glibc's ``malloc_trim``), once per chunk; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Any


@functools.cache
def _glibc() -> Any | None:
    """glibc, if this process runs on it (it has ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def trim_heap() -> bool:
    """Return the C heap's free pages to the OS; whether any were (False off glibc)."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
