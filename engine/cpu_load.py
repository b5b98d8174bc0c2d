"""How busy the machine was: CPU seconds from /proc/stat against this process's own.

The benchmarks and the engine queue (for each reply) use the same reader, so "machine busy:
40 % other processes" in the app means what the bench's ``other_load`` column means.
No torch here: a benchmark worker for a peer imports it without the engine's model code.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

BUSY_SHOWN = 0.05  # front ends mention other processes' load above this share of all cores


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used since boot (Linux; 0 elsewhere)."""
    try:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


@dataclass(frozen=True)
class Stamp:
    """A moment with the machine's and this process's CPU use at it."""

    at: float  # time.monotonic(): one clock for all processes of a machine (Linux)
    busy_s: float  # machine_busy_s()
    cpu_s: float  # this process's CPU time so far

    @classmethod
    def now(cls) -> Stamp:
        return cls(time.monotonic(), machine_busy_s(), time.process_time())


def other_load(start: Stamp, end: Stamp, own_cpu_s: float | None = None) -> float:
    """The share of all cores that other processes used from ``start`` to ``end``.

    Own CPU is ``end.cpu_s - start.cpu_s`` (both stamps from this process) unless given, as for
    a parent's spawn stamp and its worker's. Above a few percent the machine was shared and
    speeds measured in the window are low.
    """
    wall = end.at - start.at
    own = end.cpu_s - start.cpu_s if own_cpu_s is None else own_cpu_s
    if wall <= 0:
        return 0.0
    return max(end.busy_s - start.busy_s - own, 0.0) / (wall * (os.cpu_count() or 1))
