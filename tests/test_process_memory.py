"""Freed memory goes back to the OS between a sweep's cells (radpriv.process_memory)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from radpriv.process_memory import malloc_trim, resident_bytes

pytestmark = pytest.mark.skipif(malloc_trim() is None or resident_bytes() is None,
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


def test_memory_freed_inside_the_heap_is_returned_to_the_os():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    assert m["after_free"] > m["held"] - 50 * mib, f"glibc returned the holes by itself, the test shows nothing: {m}"
    assert m["released"] > 150 * mib, m
    assert m["after_trim"] < m["held"] - 150 * mib, m
