"""engine/heap.py gives freed heap memory back: what a first load's RSS depends on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.heap import _glibc

# in a fresh interpreter, so that no earlier test has shaped the heap: blocks below glibc's mmap
# threshold come from the heap; the small live ones between them keep it from shrinking at its
# top when the big ones are freed, as a load's kept packs did between its temporaries
SCENARIO = """
import json, psutil
from engine.heap import TRIM_FROM, trim_heap
rss = lambda: psutil.Process().memory_info().rss
big, small = [], []
for _ in range(4 * TRIM_FROM // 100_000):
    block = bytearray(100_000)
    block[::4096] = b"x" * len(block[::4096])  # its pages resident
    big.append(block)
    small.append(bytearray(1_000))
before = rss()
del block
big.clear()
freed = rss()
trim_heap()
print(json.dumps({"trim_from": TRIM_FROM, "before": before, "freed": freed, "after": rss()}))
"""


@pytest.mark.skipif(_glibc() is None, reason="the C library has no malloc_trim (not glibc)")
def test_freed_blocks_kept_apart_by_live_ones_go_back_to_the_system() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert m["before"] - m["freed"] < m["trim_from"]  # freeing alone gave back little
    assert m["freed"] - m["after"] > 2 * m["trim_from"]  # the trim gave back most of 4x that
