"""Freed memory goes back to the OS between a sweep's cells (radpriv.process_memory)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from radpriv.process_memory import malloc_trim, peak_resident_bytes, reset_peak_resident, resident_bytes

needs_trim = pytest.mark.skipif(malloc_trim() is None or resident_bytes() is None,
                                reason="needs glibc's malloc_trim and /proc (Linux)")

# In a fresh interpreter, so the heap's layout is the script's alone: after other tests, glibc's
# adaptive mmap/trim thresholds and the holes they left decide where blocks land. 64 KiB blocks
# sit below the mmap threshold, so they come from the heap; a small block kept after each pins the
# heap's top, so freeing the big ones leaves holes glibc keeps (as it kept a training cell's
# memory) until malloc_trim returns them.
SCRIPT = """
import json
from radpriv.process_memory import resident_bytes, return_freed_memory
big, pins = [], []
for _ in range(3000):
    big.append(bytearray(64 * 1024))
    pins.append(bytearray(600))
held = resident_bytes()
del big
after_free = resident_bytes()
released = return_freed_memory()
print(json.dumps({"held": held, "after_free": after_free, "released": released,
                  "after_trim": resident_bytes(), "pins": len(pins)}))
"""


@needs_trim
def test_memory_freed_inside_the_heap_is_returned_to_the_os():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    assert m["after_free"] > m["held"] - 50 * mib, f"glibc returned the holes by itself, the test shows nothing: {m}"
    assert m["released"] > 150 * mib, m
    assert m["after_trim"] < m["held"] - 150 * mib, m


# A block this large is mmap'ed and given back to the OS when freed, so the peak it leaves is
# the only trace of it; a fresh interpreter, so nothing else in the process moves the mark.
PEAK_SCRIPT = """
import json
from radpriv.process_memory import peak_resident_bytes, reset_peak_resident, resident_bytes
reset_peak_resident()
start = peak_resident_bytes()
block = bytearray(300 * 2**20)  # zero-filled: every page touched
del block
after_block = peak_resident_bytes()
reset = reset_peak_resident()
print(json.dumps({"start": start, "after_block": after_block, "reset": reset,
                  "after_reset": peak_resident_bytes(), "resident": resident_bytes()}))
"""


@pytest.mark.skipif(peak_resident_bytes() is None or not reset_peak_resident(),
                    reason="needs /proc/self/status and a writable /proc/self/clear_refs (Linux >= 4.0)")
def test_a_runs_peak_memory_is_its_own_and_outlives_the_memory_it_measured():
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    assert m["after_block"] >= m["start"] + 290 * mib, m  # the block counted, though freed
    assert m["resident"] < m["after_block"] - 250 * mib, m  # ...and really gone
    assert m["reset"] and m["after_reset"] < m["after_block"] - 250 * mib, m  # a new run starts afresh
