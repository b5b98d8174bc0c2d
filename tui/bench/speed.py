"""`llama-tui bench`: load, prefill and decode speed of our engine next to transformers.

Each engine (and each of our dtypes) runs in its own fresh worker process
(tui/bench/workers.py), so import caches, thread pools and peak RSS are per engine. All decode
from the same prompt token ids, greedy, ignoring end-of-sequence, so every run generates
exactly ``--tokens`` tokens; the figures are medians over the timed runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui.bench.common import (
    PARITY_TOKENS,
    WorkerFailed,
    median_figures,
    parity_of,
    run_worker,
    text_table,
)
from tui.bench.workers import OURS, TRANSFORMERS, Spec

if TYPE_CHECKING:
    from engine import Profile

# --- parent: spawn the workers, compare, print ---------------------------------------------


def spawn(spec: Spec, what: str) -> dict[str, Any]:
    """One worker process to the end; its record (UserError if it failed)."""
    print(f"bench: running {what} ...", file=sys.stderr, flush=True)
    try:
        return run_worker("tui.bench.workers", [spec.to_json()])
    except WorkerFailed as exc:
        from engine import UserError

        raise UserError(f"bench: {what} worker failed: {exc}") from None


def _medians(record: dict[str, Any]) -> dict[str, Any]:
    """A worker's record with the median of its timed runs in place of the runs."""
    runs = record.pop("runs")
    return {**record, "dtype": record["weights"], **median_figures(runs)}


ROWS = (  # key, label, scale, format, higher is better (None: no ratio)
    ("import_s", "import torch (s)", 1.0, "{:.2f}", False),
    ("load_s", "load model (s)", 1.0, "{:.2f}", False),
    ("ttft_s", "time to first token (ms)", 1000.0, "{:.0f}", False),
    ("prefill_tok_s", "prefill (tok/s)", 1.0, "{:.1f}", True),
    ("decode_tok_s", "decode (tok/s)", 1.0, "{:.1f}", True),
    ("peak_rss_bytes", "peak RSS (MiB)", 1 / 2**20, "{:.0f}", False),
    ("other_load", "other processes' CPU use (%)", 100.0, "{:.0f}", None),
)


def format_table(ours: list[dict[str, Any]], theirs: dict[str, Any] | None) -> str:
    head = ["metric"] + [f"llama-tui {o['dtype']}" for o in ours]
    if theirs is not None:
        head += ["transformers fp32"] + [f"ratio {o['dtype']}" for o in ours]
    lines = [head]
    for key, label, scale, fmt, better in ROWS:
        row = [label] + [fmt.format(o[key] * scale) for o in ours]
        if theirs is not None:
            row += [fmt.format(theirs[key] * scale)]
            row += [
                f"{o[key] / theirs[key]:.2f}x" if theirs[key] and better is not None else "-"
                for o in ours
            ]
        lines.append(row)
    return text_table(lines)


def run_bench(args: argparse.Namespace, profile: Profile) -> int:
    import importlib.util

    import torch

    from engine import UserError, default_model_path, profile_to_dict

    if args.tokens < 2 or args.runs < 1:
        raise UserError("bench needs --tokens >= 2 and --runs >= 1")
    model = Path(profile.model) if profile.model else default_model_path()
    dtypes = [args.dtype] if args.dtype else ["float32", "bfloat16", "bfloat16+int4"]
    threads = args.threads or torch.get_num_threads()
    base = Spec(OURS, str(model), threads, args.tokens, args.runs, device=profile.device)
    ours = []
    for dtype in dtypes:
        name, _, variant = dtype.partition("+")  # "bfloat16+int4": 4-bit blocks on the int4 kernel
        run = replace(profile, dtype=name, native_4bit=variant == "int4")
        ours.append(_medians(spawn(replace(base, profile=profile_to_dict(run)), f"ours {dtype}")))
    theirs = None
    note = ""
    if args.no_peers:
        note = "transformers: skipped (--no-peers)"
    elif importlib.util.find_spec("transformers") is None:
        note = "transformers: not installed (pip install transformers); our figures only"
    else:
        peer = replace(base, engine=TRANSFORMERS, ids=ours[0]["prompt_ids"])
        theirs = _medians(spawn(peer, "transformers float32"))
    meta = {
        "model": model.name,
        "prompt_tokens": len(ours[0]["prompt_ids"]),
        "decode_tokens": args.tokens,
        "runs": args.runs,
        "threads": threads,
        "torch": torch.__version__,
        "device": profile.device,
    }
    parity = {o["dtype"]: parity_of(o["tokens"], theirs["tokens"]) for o in ours} if theirs else {}
    if args.json:
        strip = ("prompt_ids", "tokens", "first_token", "weights")
        record = {
            **meta,
            "llama_tui": [{k: v for k, v in o.items() if k not in strip} for o in ours],
            "transformers": theirs and {k: v for k, v in theirs.items() if k not in strip},
            "parity": parity,
            "note": note or None,
        }
        print(json.dumps(record))
        return 0
    print(
        f"{model.name}: {meta['prompt_tokens']}-token chat prompt, {args.tokens} greedy "
        f"tokens, median of {args.runs} runs, {threads} threads, torch {torch.__version__}"
    )
    print(format_table(ours, theirs))
    if theirs:
        print("ratio = llama-tui / transformers: higher is better for tok/s, lower for s/ms/MiB")
    for dtype, verdict in parity.items():
        print(
            f"parity: first {PARITY_TOKENS} greedy tokens, llama-tui {dtype} vs "
            f"transformers fp32: {verdict}"
        )
    busiest = max(r["other_load"] for r in [*ours, *([theirs] if theirs else [])])
    if busiest > 0.05:
        print(
            f"warning: other processes used up to {busiest:.0%} of the CPU during the timed "
            "runs: the speeds are lower than on an idle machine"
        )
    if note:
        print(note)
    return 0
