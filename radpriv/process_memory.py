"""Give memory that training freed back to the OS between the runs of one process, and measure
each run's peak.

Why: a sweep or a study trains many models in one process. After a run its tensors are gone,
but glibc keeps the freed blocks of its heaps for reuse instead of returning them, so the
process stays at its peak resident size, and the next run, shaped differently, fragments them
further. On a machine shared by sweep workers that kept memory decides how many runs fit at
once (on CT reports a DP-LoRA run peaks at about 11 GB and full fine-tuning at 12 GB:
docs/RESULTS.md; `radpriv sweep sweep.plan_only=true` gives the peak per kind of cell).
`malloc_trim(0)` returns the free pages of every heap to the OS (3.98 GB resident after a
cell, 0.69 GB after the call: docs/RESULTS.md, "Memory of a sweep"). Only glibc has `malloc_trim`;
elsewhere (macOS, musl) this is a no-op that says so once.

Each training run logs its peak resident memory (`memory/peak_resident_gb`). Linux keeps one
high-water mark per process; a run resets it when it starts, so the peak is the run's own, not
that of the runs before it in the same process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

# the metric a training run logs its peak under; the sweep and its plan read it back
PEAK_RESIDENT_METRIC = "memory/peak_resident_gb"


def resident_bytes() -> int | None:
    """This process's resident set size, or None where /proc is not available."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def machine_memory_bytes() -> int | None:
    """The machine's physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return None


def reset_peak_resident() -> bool:
    """Restart the kernel's high-water mark of this process's resident memory (VmHWM) from its
    current size (Linux >= 4.0: `5` written to /proc/self/clear_refs). False where that is not
    possible: the peak then counts from the process's start, so it can only be too high."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_resident_bytes() -> int | None:
    """The most resident memory this process has held since its start or the last reset; None
    where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        pass
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
