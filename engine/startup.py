"""A model load with Python's cyclic garbage collector paused.

Importing torch and building a model make millions of objects, and each full collection walks
all of them: a start ran three of them, ~0.1-0.2 s of `ask`'s 2 s to its first token. A load
leaves no cyclic garbage worth collecting early, so the collector is off while one runs and
back on once it ends (no collection is forced then).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """gc off for the ``with`` body; on again after it, unless it was off before."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
