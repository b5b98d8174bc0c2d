"""Which dense dtype multiplies faster on this CPU, measured once and remembered.

CPU flags promise native bfloat16 (AVX512-BF16, AMX) but do not say whether a decode step, one
token times each weight matrix, runs faster in it: on an AMX Xeon dense bfloat16 decoded the
default model slower than float32. So "auto" on a CPU times a decode-shaped product in both
dtypes (tens of ms) and keeps the verdict in the user cache folder, keyed by the CPU model and
torch's version. bfloat16 must win clearly (MARGIN): float32 is exact, and noise or a tie
should not trade precision for nothing.

The answer depends on matrix size and on how busy the machine is: on the AMX Xeon this was
written on, one thread, the default model's small matrices ([1536, 576]) ran ~8% faster in
float32, and a [4096, 2048] one took 0.9-1.05x float32's time in bfloat16 when the machine was
quiet (0.75-0.95x when it was busy). SHAPE is the latter, a 1B-class projection, since larger
models are the ones that run dense (the default Q4 model runs on the int4 kernel whatever the
verdict); there, this machine measures float32.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine.user_cache import cache_dir, write_atomically

VERDICT_FILE = "cpu-dtype.json"
SHAPE = (4096, 2048)  # out x in of the weight (a 1B-class FFN); the activation is one token
WARMUP, ROUNDS = 2, 10  # untimed then timed rounds, each float32 then bfloat16
MARGIN = 0.85  # bfloat16 is chosen when its best time is under MARGIN x float32's
CANDIDATES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def verdict_key() -> dict[str, str]:
    return {"cpu": cpu_model(), "torch": torch.__version__}


def measure() -> dict[str, float]:
    """Best seconds of one decode-shaped product [1, in] x [in, out] per candidate dtype,
    interleaved. On one thread: the ratio is a property of the core and its memory path, and a
    thread team on a shared machine times mostly its waits for a descheduled member; the best
    of several rounds is the one no other process interrupted."""
    out_f, in_f = SHAPE
    cases = {
        name: (torch.full((1, in_f), 0.5, dtype=dt), torch.full((out_f, in_f), 0.01, dtype=dt))
        for name, dt in CANDIDATES.items()
    }
    best = dict.fromkeys(cases, math.inf)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for round_ in range(WARMUP + ROUNDS):
                for name, (x, w) in cases.items():
                    t0 = time.perf_counter()
                    F.linear(x, w)
                    if round_ >= WARMUP:  # the first rounds warm up kernels and caches
                        best[name] = min(best[name], time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return best


def _read(path: Path) -> str | None:
    """The remembered dtype name, if the file is whole and its key is this machine's."""
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != verdict_key():
        return None
    name = data.get("dtype")
    return name if name in CANDIDATES else None


def cpu_dense_dtype() -> torch.dtype:
    """float32 or bfloat16, whichever this CPU multiplied faster when measured (see above)."""
    path = cache_dir() / VERDICT_FILE
    name = _read(path)
    if name is None:
        best = measure()
        name = "bfloat16" if best["bfloat16"] < MARGIN * best["float32"] else "float32"
        record = {"key": verdict_key(), "dtype": name, "best_s": best, "shape": SHAPE}
        # a cache: if it cannot be written, the next start measures again (tens of ms)
        write_atomically(path, lambda temp: temp.write_text(json.dumps(record, indent=1)))
    return CANDIDATES[name]
