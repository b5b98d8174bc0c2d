"""`llama-tui bench`: load, prefill and decode speed of our engine next to transformers.

Each engine runs in its own fresh subprocess
(``python -m tui.bench.speed --worker ours|transformers``), so import caches, thread pools
and peak RSS are per engine; the worker prints one JSON line.
Both decode greedily from the same prompt token ids and ignore end-of-sequence, so every run
decodes exactly ``--tokens`` tokens. Nothing from torch or engine (whose package imports
torch) is imported at module level, so the worker can time ``import torch``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui.bench.common import (
    CpuWindow,
    WorkerFailed,
    median_figures,
    run_worker,
    sync,
    timed_runs,
)

if TYPE_CHECKING:
    from engine import Profile

PROMPT = (
    "I am planning a three-day walking trip in the Scottish Highlands in late September. "
    "I will start in Fort William, carry my own tent, and I can walk about twenty kilometres "
    "a day on rough paths. I have a waterproof jacket, a warm sleeping bag rated to minus five "
    "degrees, a small gas stove and a paper map, but no satellite phone. The weather forecast "
    "says showers and strong winds on the second day. Please suggest a route with a place to "
    "camp each night, tell me what else I should pack, explain how to decide whether to turn "
    "back when the wind picks up on an exposed ridge, and list the three most common mistakes "
    "that first-time visitors make in that part of Scotland, with a short tip for each."
)
PARITY_TOKENS = 32  # leading greedy tokens compared between the engines
WARMUP_TOKENS = 8  # tokens decoded by the untimed warm-up run


# --- workers: each runs in a fresh process and prints one JSON line --------------------------


Run = Callable[[int], tuple[dict[str, float], list[int]]]  # n tokens -> (figures, token ids)


def _timed(one_run: Run, w: argparse.Namespace) -> tuple[dict[str, float], list[int]]:
    """One short warm-up, then the median figures of the timed runs and the first run's tokens.

    other_load: CPU time other processes used during the timed runs, as a share of all cores;
    above a few percent the machine was shared and the speeds are low.
    """
    window = CpuWindow()
    runs = timed_runs(one_run, w.tokens, w.runs, WARMUP_TOKENS)
    load = window.other_load()
    return {**median_figures([r for r, _ in runs]), "other_load": load}, runs[0][1]


def worker_ours(w: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    import torch

    import_s = time.perf_counter() - t0
    from engine import (
        KVCache,
        Message,
        decode_one_token,
        encode_dialog,
        load_model,
        peak_rss_bytes,
        prefill,
        resolve_placement,
    )

    torch.set_num_threads(w.threads)
    name, _, variant = w.dtype.partition("+")  # "bfloat16+int4": 4-bit blocks on the int4 kernel
    placement = resolve_placement(w.device, name, native_4bit=variant == "int4")
    device, dtype = placement.device, placement.dtype
    t0 = time.perf_counter()
    loaded = load_model(Path(w.model), placement=placement, context_length=w.context)
    load_s = time.perf_counter() - t0
    if loaded.chat_template is None:
        ids = loaded.tokenizer.encode(PROMPT)
    else:
        ids = encode_dialog(loaded.tokenizer, loaded.chat_template, [Message("user", PROMPT)])
    a, model = loaded.args, loaded.model
    cache = KVCache(
        a.n_layers,
        a.n_kv_heads,
        a.head_dim,
        len(ids) + w.tokens + 1,
        dtype=loaded.dtype,
        device=device,
    )

    def one_run(n: int) -> tuple[dict[str, float], list[int]]:
        cache.truncate(0)
        t0 = time.perf_counter()
        logits = prefill(model, cache, ids, 0)
        sync(device)
        t_prefill = time.perf_counter()
        out = [int(logits.argmax())]
        t_first = time.perf_counter()
        while len(out) < n:
            out.append(int(decode_one_token(model, cache, out[-1]).argmax()))
        t_end = time.perf_counter()
        steps = max(n - 1, 1)
        return {
            "prefill_tok_s": len(ids) / (t_prefill - t0),
            "ttft_s": t_first - t0,
            "decode_tok_s": steps / (t_end - t_first),
        }, out

    figures, tokens = _timed(one_run, w)
    return {
        "engine": "llama-tui",
        "dtype": str(dtype).removeprefix("torch.") + ("+int4" if variant == "int4" else ""),
        "import_torch_s": import_s,
        "load_s": load_s,
        **figures,
        "peak_rss_bytes": peak_rss_bytes(),
        "prompt_ids": ids,
        "tokens": tokens,
    }


def worker_transformers(w: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    import torch

    import_s = time.perf_counter() - t0
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    from engine import peak_rss_bytes, resolve_device

    class Clock(BaseStreamer):  # generate() calls put() with the prompt, then once per token
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    torch.set_num_threads(w.threads)
    path, device = Path(w.model), resolve_device(w.device)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, device_map=device
    ).eval()
    load_s = time.perf_counter() - t0
    ids = torch.tensor([w.ids], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)

    def one_run(n: int) -> tuple[dict[str, float], list[int]]:
        with torch.inference_mode():
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
            sync(device)
            prefill_s = time.perf_counter() - t0
        clock = Clock()
        t0 = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            streamer=clock,
            pad_token_id=0,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        tokens = out[0, ids.shape[1] :].tolist()
        t_first, t_end = clock.times[1], clock.times[-1]  # times[0] is the prompt
        steps = max(n - 1, 1)
        return {
            "prefill_tok_s": ids.shape[1] / prefill_s,
            "ttft_s": t_first - t0,
            "decode_tok_s": steps / (t_end - t_first),
        }, tokens

    figures, tokens = _timed(one_run, w)
    return {
        "engine": "transformers",
        "dtype": "float32",
        "import_torch_s": import_s,
        "load_s": load_s,
        **figures,
        "peak_rss_bytes": peak_rss_bytes(),
        "tokens": tokens,
    }


# --- parent: spawn the workers, compare, print ---------------------------------------------


def _spawn(kind: str, dtype: str, flags: list[str], ids: list[int] | None = None) -> dict[str, Any]:
    argv = ["--worker", kind, "--dtype", dtype, *flags]
    if ids is not None:
        argv += ["--ids", ",".join(map(str, ids))]
    print(f"bench: running {kind} {dtype} ...", file=sys.stderr, flush=True)
    try:
        return run_worker("tui.bench.speed", argv)
    except WorkerFailed as exc:
        from engine import UserError

        raise UserError(f"bench: {kind} {dtype} worker failed: {exc}") from None


def _parity(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    a, b = ours["tokens"][:PARITY_TOKENS], theirs["tokens"][:PARITY_TOKENS]
    if a == b:
        return f"identical ({len(a)} tokens)"
    pairs = enumerate(zip(a, b, strict=False))
    first = next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
    return f"DIFFER from token {first} of {len(a)}"


ROWS = (  # key, label, scale, format, higher is better (None: no ratio)
    ("import_torch_s", "import torch (s)", 1.0, "{:.2f}", False),
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
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = [
        " | ".join(
            c.ljust(wd) if i == 0 else c.rjust(wd)
            for i, (c, wd) in enumerate(zip(r, widths, strict=True))
        )
        for r in lines
    ]
    out.insert(1, "-+-".join("-" * wd for wd in widths))
    return "\n".join(out)


def run_bench(args: argparse.Namespace, profile: Profile) -> int:
    import importlib.util

    import torch

    from engine import UserError, default_model_path

    if args.tokens < 2 or args.runs < 1:
        raise UserError("bench needs --tokens >= 2 and --runs >= 1")
    model = Path(profile.model) if profile.model else default_model_path()
    dtypes = [args.dtype] if args.dtype else ["float32", "bfloat16", "bfloat16+int4"]
    threads = args.threads or torch.get_num_threads()
    settings = {
        "model": model,
        "device": profile.device,
        "threads": threads,
        "context": profile.context_length,
        "tokens": args.tokens,
        "runs": args.runs,
    }
    flags = [x for k, v in settings.items() for x in (f"--{k}", str(v))]
    ours = [_spawn("ours", d, flags) for d in dtypes]
    theirs = None
    note = ""
    if args.no_peers:
        note = "transformers: skipped (--no-peers)"
    elif importlib.util.find_spec("transformers") is None:
        note = "transformers: not installed (pip install transformers); our figures only"
    else:
        theirs = _spawn("transformers", "float32", flags, ours[0]["prompt_ids"])
    meta = {
        "model": model.name,
        "prompt_tokens": len(ours[0]["prompt_ids"]),
        "decode_tokens": args.tokens,
        "runs": args.runs,
        "threads": threads,
        "torch": torch.__version__,
        "device": profile.device,
    }
    parity = {o["dtype"]: _parity(o, theirs) for o in ours} if theirs else {}
    if args.json:
        strip = ("prompt_ids", "tokens")
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


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tui.bench.speed")
    p.add_argument("--worker", choices=("ours", "transformers"), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ids", type=lambda s: [int(x) for x in s.split(",")], default=[])
    w = p.parse_args(argv)
    result = worker_ours(w) if w.worker == "ours" else worker_transformers(w)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
