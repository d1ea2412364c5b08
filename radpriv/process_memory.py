"""Give memory that training freed back to the OS between the runs of one process.

A sweep or a study trains many models in one process. After a cell, every tensor of it is
gone (measured: 3-5 live tensors, 11 nn.Modules, the same after each cell), yet the process
stays at its peak resident size: glibc keeps the freed blocks of its heaps for reuse rather
than returning them. The next cell, whose allocations are shaped differently, fragments them
further. A CT sweep process grew to 11-12 GB over a few cells and was OOM-killed twice
(docs/RESULTS.md). `malloc_trim(0)` returns the free pages of every heap to the OS; measured on
a MiniLM cell at 256 tokens, 3.98 GB resident after the cell -> 0.69 GB after the call.

Only glibc has `malloc_trim`; elsewhere (macOS, musl) this is a no-op that says so once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)


def resident_bytes() -> int | None:
    """This process's resident set size, or None where /proc is not available."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        fn = None
    if fn is None:
        log.debug("process memory: this C library has no malloc_trim; freed memory stays with the process")
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def return_freed_memory() -> int | None:
    """Return the heaps' free pages to the OS; the bytes of resident memory that went (None: unknown)."""
    import gc

    gc.collect()  # reference cycles (Lightning's trainer ↔ module, hooks) hold tensors until collected
    before = resident_bytes()
    trim = malloc_trim()
    if trim is not None:
        trim(0)
    after = resident_bytes()
    return None if before is None or after is None else max(0, before - after)
