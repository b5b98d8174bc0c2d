"""Give the C heap's freed memory back to the system while a model loads.

Dequantizing and packing a tensor allocates float32 temporaries of several MB, and the packed
result is kept between them. glibc then keeps the freed space (above its trim threshold, or in
holes the kept packs split), so a first load's RSS grew with every tensor: the default model's
peak was ~630 MiB for ~85 MB of placed weights. ``trim_heap`` after each tensor returns those
pages once enough of them are free. Other C libraries (musl, macOS) have no such calls; there
it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any

TRIM_FROM = 16 << 20  # bytes freed since the last trim from which another pays (milliseconds)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _glibc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)  # the process's own C library
    if not (hasattr(libc, "malloc_trim") and hasattr(libc, "mallinfo2")):  # glibc >= 2.33
        return None
    libc.mallinfo2.restype = _MallInfo2
    return libc


_trimmed_at = [0]  # the heap's free bytes just after the last trim (trimmed chunks stay free)


def trim_heap() -> None:
    """Return the heap's free pages to the system once TRIM_FROM bytes more are free than
    after the last trim; no-op where the C library cannot."""
    libc = _glibc()
    if libc is None or libc.mallinfo2().fordblks < _trimmed_at[0] + TRIM_FROM:
        return
    libc.malloc_trim(0)
    _trimmed_at[0] = libc.mallinfo2().fordblks
