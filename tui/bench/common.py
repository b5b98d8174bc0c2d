"""What the benchmarks share: worker subprocesses, device sync, timed runs (machine load:
engine/cpu_load.py, which the engine queue uses for each reply too).

Nothing from torch or engine (whose package imports torch) is imported at module level, so a
worker that imports this module can still time ``import torch``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
PARITY_TOKENS = 32  # leading greedy tokens compared between the engines
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


def parity_of(ours: Sequence[int], theirs: Sequence[int]) -> str:
    """Whether two engines' first PARITY_TOKENS generated tokens agree, in words."""
    a, b = list(ours[:PARITY_TOKENS]), list(theirs[:PARITY_TOKENS])
    if a == b:
        return f"identical ({len(a)} tokens)"
    pairs = enumerate(zip(a, b, strict=False))
    first = next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
    return f"DIFFER from token {first} of {len(a)}"


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as aligned columns (the first left, the rest right), a rule under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [
        " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux ru_maxrss is in KiB); here rather than
    engine's so that a llama.cpp worker never imports torch."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
