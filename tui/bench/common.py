"""What the benchmarks share: worker subprocesses, device sync, timed runs, machine load.

Nothing from torch or engine (whose package imports torch) is imported at module level, so a
worker that imports this module can still time ``import torch``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
T = TypeVar("T")


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_env() -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH, for ``python -m`` workers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


class WorkerFailed(Exception):
    """A benchmark worker exited non-zero; the message is its last line of stderr."""


def run_worker(module: str, argv: Sequence[str]) -> dict[str, Any]:
    """Run ``python -m module argv`` to the end; its last stdout line, parsed as JSON."""
    cmd = [sys.executable, "-m", module, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=worker_env())
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"(exit {proc.returncode}, no output)"]
        raise WorkerFailed(tail[0])
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def timed_runs(one_run: Callable[[int], T], tokens: int, runs: int, warmup: int) -> list[T]:
    """One untimed warm-up of ``warmup`` tokens (kernels, allocator), then ``runs`` runs."""
    one_run(min(warmup, tokens))
    return [one_run(tokens) for _ in range(runs)]


def median_figures(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per key, the median over the runs."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used since boot (Linux; 0 elsewhere)."""
    try:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:9]]
    except OSError:
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def other_share(machine_s: float, own_s: float, wall_s: float) -> float:
    """Other processes' CPU time as a share of all cores over ``wall_s`` seconds."""
    if wall_s <= 0:
        return 0.0
    return max(machine_s - own_s, 0.0) / (wall_s * (os.cpu_count() or 1))


@dataclass
class CpuWindow:
    """From creation to ``other_load()``: the CPU share used by processes other than this one.

    Above a few percent the machine was shared and speeds measured in the window are low.
    """

    busy0: float = field(default_factory=machine_busy_s)
    cpu0: float = field(default_factory=time.process_time)
    wall0: float = field(default_factory=time.perf_counter)

    def other_load(self) -> float:
        return other_share(
            machine_busy_s() - self.busy0,
            time.process_time() - self.cpu0,
            time.perf_counter() - self.wall0,
        )
