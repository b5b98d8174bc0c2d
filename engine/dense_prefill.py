"""From how many prompt rows a 4-bit layer runs dense: measured once per machine, remembered.

A prefill chunk of T tokens can run a 4-bit block projection two ways: on torch's int4 kernel,
whose time grows with T from almost nothing, or dequantized into the model's shared bfloat16
scratch (quantized.DenseScratch) and multiplied as a dense GEMM, which pays the dequantization
once per chunk and then costs far less per row where the CPU multiplies bfloat16 natively.
Where the two cross depends on the CPU, the thread count and the layers' shapes:

- 2-core Zen 4 VM (AVX512-BF16), default model: 68-78 rows. The fixed 128 this replaced left
  prompts of 100 and 120 tokens 15-23% slower than the dense path (whole prefills, interleaved).
- AVX2 EPYC without native bfloat16: a dense [128, 576] x [576, 1536] GEMM took 54x float32's
  time, so the dense path never wins there.

So the first load of a 4-bit model times one block's projections both ways at LOW and HIGH rows,
fits each way as a line in T, and keeps where they cross (or that they do not) in the user cache
folder, keyed by the CPU, torch, the thread count and the layers' shapes. Tens to hundreds of
milliseconds, once; a lost or foreign record is measured again.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import torch
from torch import nn

from engine.cpu_dtype import cpu_model
from engine.generate import PREFILL_CHUNK
from engine.quantized import DenseScratch, Int4Linear, pack_block, pack_layout_known
from engine.user_cache import cache_dir, write_atomically

VERDICT_FILE = "dense-rows.json"
LOW, HIGH = 32, 128  # chunk rows timed on both ways
FEWEST = 32  # shorter chunks stay on the kernel whatever the fit says (turns, drafts)
LONGEST = PREFILL_CHUNK  # no chunk is longer, so a later crossing is "never"
ROUNDS, BUDGET_S = 8, 0.3  # at most ROUNDS interleaved rounds, fewer once BUDGET_S is spent
NEVER = 4.0  # after the warm-up round: dense this many times slower at HIGH rows, stop there

Best = dict[str, float]  # "kernel@32", "dense@128", ...: best seconds for one block's layers


def dense_layers(model: nn.Module) -> dict[str, Int4Linear]:
    """The block projections that can run dense: 4-bit, in whole pack blocks (not the head)."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, Int4Linear)
        and name.startswith("layers.")
        and m.out_features % max(pack_block(), 1) == 0
    }


def share_scratch(model: nn.Module) -> int:
    """Give the block projections of ``model`` one DenseScratch, from the rows this machine
    measured for them (dense_from_rows): longer prefill chunks then run as dense bfloat16
    GEMMs. Returns how many layers; 0 where the dense path never wins or this torch's pack
    layout is unknown."""
    layers = dense_layers(model)
    if not (layers and pack_layout_known()):
        return 0
    rows = dense_from_rows([m for name, m in layers.items() if name.startswith("layers.0.")])
    if rows is None:
        return 0
    scratch = DenseScratch(rows)
    for m in layers.values():
        m.scratch = scratch
    return len(layers)


def dense_prefill_rows(model: nn.Module) -> int | None:
    """The chunk rows from which ``model``'s prefill runs dense; None where it never does."""
    scratch = next((m.scratch for m in dense_layers(model).values() if m.scratch), None)
    return scratch.from_rows if scratch is not None else None


def verdict_key(block: list[Int4Linear]) -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shapes": [[m.in_features, m.out_features] for m in block],
    }


def dense_from_rows(block: list[Int4Linear]) -> int | None:
    """The chunk rows from which ``block`` (one block's 4-bit projections) runs dense on this
    machine, None for never: remembered, else measured and remembered."""
    path = cache_dir() / VERDICT_FILE
    key = verdict_key(block)
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    records = data.get("records") if isinstance(data, dict) else None
    records = records if isinstance(records, list) else []
    for record in records:
        if isinstance(record, dict) and record.get("key") == key:
            rows = record.get("from_rows")
            if rows is None or (isinstance(rows, int) and FEWEST <= rows <= LONGEST):
                return rows
    best = measure(block)
    rows = crossing(best)
    kept = [r for r in records if isinstance(r, dict) and r.get("key") != key]
    record = {"key": key, "from_rows": rows, "best_ms": {k: 1e3 * v for k, v in best.items()}}
    text = json.dumps({"records": [*kept, record]}, indent=1)
    # a cache: if it cannot be written, the next load measures again
    write_atomically(path, lambda temp: temp.write_text(text))
    return rows


def crossing(best: Best) -> int | None:
    """The fewest rows (FEWEST..LONGEST) at which the dense line lies under the kernel's, each
    way a line through its times at LOW and HIGH rows; None where it never does."""
    kernel_low, kernel_high = best[f"kernel@{LOW}"], best[f"kernel@{HIGH}"]
    dense_low, dense_high = best[f"dense@{LOW}"], best[f"dense@{HIGH}"]
    if dense_high > NEVER * kernel_high:
        return None
    kernel_slope = (kernel_high - kernel_low) / (HIGH - LOW)
    dense_slope = (dense_high - dense_low) / (HIGH - LOW)

    def gap(rows: int) -> float:  # dense minus kernel at ``rows``
        return dense_low - kernel_low + (dense_slope - kernel_slope) * (rows - LOW)

    if gap(FEWEST) < 0:
        return FEWEST
    if dense_slope >= kernel_slope:
        return None
    rows = math.floor(LOW + (dense_low - kernel_low) / (kernel_slope - dense_slope)) + 1
    return rows if rows <= LONGEST else None


def measure(block: list[Int4Linear]) -> Best:
    """Best seconds of the block's forwards one after another, on each way at LOW and HIGH
    rows, interleaved, after one warm-up round; float32 inputs, as the model passes them. The
    best of several rounds is the one no other process interrupted. A dense way NEVER times
    slower in the warm-up round is not timed further."""
    inputs = {rows: [torch.full((rows, m.in_features), 0.5) for m in block] for rows in (LOW, HIGH)}
    scratch = DenseScratch(1)  # its own buffer: the model's is made inside inference mode
    saved = [m.scratch for m in block]
    best: Best = {}
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for round_ in range(1 + ROUNDS):
                times = {
                    f"{way}@{rows}": timed(block, xs, scratch if way == "dense" else None)
                    for way in ("kernel", "dense")
                    for rows, xs in inputs.items()
                }
                if round_ == 0:
                    if times[f"dense@{HIGH}"] > NEVER * times[f"kernel@{HIGH}"]:
                        return times
                    continue
                best = {k: min(best.get(k, math.inf), t) for k, t in times.items()}
                if round_ >= 2 and time.perf_counter() - start > BUDGET_S:
                    break
    finally:
        for m, kept in zip(block, saved, strict=True):
            m.scratch = kept
    return best


def timed(block: list[Int4Linear], xs: list[torch.Tensor], scratch: DenseScratch | None) -> float:
    for m in block:
        m.scratch = scratch
    t0 = time.perf_counter()
    for m, x in zip(block, xs, strict=True):
        m(x)
    return time.perf_counter() - t0
