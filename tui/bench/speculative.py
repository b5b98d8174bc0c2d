"""`llama-tui bench --speculative`: prompt-lookup decoding against plain decoding.

Three tasks, in one process, on the profile's placement with the decode steps it would reach in
a chat (the compiled one-token and verify steps where the profile's ``compile`` builds them;
built before timing): two input-grounded ones (rewrite a given paragraph, edit a given function,
so the reply repeats its prompt's spans) and an open question (little repeats). Each timed run
decodes the same reply with ``speculative = "off"`` and with ``"prompt-lookup"``, alternately:
greedy, or with ``--sampling default`` the profile's sampler chain from one seed. The report
gives decode tok/s (median and range of the runs that the noise rule keeps), the ratio, the
share of drafted tokens the model accepted, and whether the two replies were the same tokens.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from engine import Stamp, other_load
from tui.bench.common import text_table
from tui.bench.vs import Sample, summarize

if TYPE_CHECKING:
    from engine import LoadedModel, Profile, SamplingSettings

MODES = ("off", "prompt-lookup")
PARAGRAPH = (
    "The river town of Alder Ford grew up around a wooden bridge built in 1742 by a miller "
    "named Thomas Hale. For a century the bridge carried wool carts to the market at "
    "Kingsbridge, and the town's inns, smithies and warehouses lined the road that led down to "
    "it. When the railway arrived in 1851, the wool trade moved to the new station on the hill, "
    "the inns closed one by one, and the old bridge was left to foot traffic until a flood "
    "carried away its middle span in 1894. A stone bridge replaced it in 1901, and the "
    "warehouses by the river became houses, a school and, in 1960, a small museum of the wool "
    "trade that still opens on summer weekends."
)
FUNCTION = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item["price"] * item["quantity"]
    tax = subtotal * tax_rate
    return round(subtotal + tax, 2)
"""
TASKS = {
    "rewrite (input-grounded)": "Rewrite the following paragraph in plain words, keeping every "
    "fact, date and name:\n\n" + PARAGRAPH,
    "code edit (input-grounded)": "Rename the variable subtotal to net in this Python function "
    "and give the whole function back:\n\n" + FUNCTION,
    "open chat": "What are three good habits for learning a new language? Explain each briefly.",
}


def _reply(
    loaded: LoadedModel, ids: list[int], mode: str, tokens: int, settings: SamplingSettings
) -> tuple[Any, float]:
    """One reply from an empty cache; (its Done, other processes' CPU share)."""
    import engine
    from engine import Done, KVCache

    a = loaded.args
    cache = KVCache(
        a.n_layers,
        a.n_kv_heads,
        a.head_dim,
        len(ids) + tokens + 1,
        dtype=loaded.dtype,
        device=loaded.device,
    )
    window = Stamp.now()
    done = None
    for event in engine.generate(
        loaded.model, loaded.tokenizer, cache, ids, settings, tokens, speculative=mode
    ):
        if isinstance(event, Done):
            done = event
    assert done is not None
    return done, other_load(window, Stamp.now())


def measure(args: argparse.Namespace, profile: Profile) -> dict[str, Any]:
    import time

    import torch

    from engine import (
        Message,
        SamplingSettings,
        compile_decode_step,
        compile_supported,
        compile_wanted,
        encode_dialog,
        load_profile_model,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_profile_model(replace(profile, compile=False))
    compile_s = None
    if compile_wanted(profile.compile) and compile_supported(loaded.model):
        t0 = time.perf_counter()
        compile_decode_step(loaded.model, verify=True)  # the verify step for drafts too
        compile_s = time.perf_counter() - t0
    if args.sampling == "greedy":
        settings = SamplingSettings(temperature=0.0, repeat_penalty=1.0, seed=0)
    else:  # the profile's chain, from one seed for every reply: the same tokens in both modes
        settings = replace(profile.sampling, seed=profile.sampling.seed or 0)
    tasks: dict[str, Any] = {}
    for name, text in TASKS.items():
        if loaded.chat_template is None:  # a model without a template: the plain text
            ids = list(loaded.tokenizer.encode(text))
        else:
            template = loaded.chat_template
            ids = list(encode_dialog(loaded.tokenizer, template, [Message("user", text)]))
        _reply(loaded, ids, "prompt-lookup", 8, settings)  # warm-up: a forward over a draft, once
        runs: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
        replies: dict[str, list[int]] = {}
        accepted = drafted = 0
        for _ in range(args.runs):
            for mode in MODES:
                done, load = _reply(loaded, ids, mode, args.tokens, settings)
                runs[mode].append((done.metrics.decode_tok_s, load))
                replies.setdefault(mode, done.token_ids)
                accepted += done.metrics.accepted_tokens
                drafted += done.metrics.draft_tokens
        tasks[name] = {
            "prompt_tokens": len(ids),
            "reply_tokens": len(replies["off"]),
            "identical": replies["off"] == replies["prompt-lookup"],
            "acceptance": accepted / drafted if drafted else 0.0,
            **{mode: _summary(found, args.max_other_load) for mode, found in runs.items()},
        }
        off, on = tasks[name]["off"]["decode_tok_s"], tasks[name]["prompt-lookup"]["decode_tok_s"]
        tasks[name]["ratio"] = on / off if off else 0.0
    return {
        "model": loaded.path.name,
        "threads": torch.get_num_threads(),
        "decode_step": "eager" if compile_s is None else "compiled",
        "compile_s": compile_s,
        "tokens": args.tokens,
        "runs": args.runs,
        "sampling": args.sampling,
        "tasks": tasks,
    }


def _summary(found: list[tuple[float, float]], max_other_load: float) -> dict[str, Any]:
    """bench --vs's noise rule over (tok/s, other processes' load) runs."""
    s = summarize([Sample(value, load) for value, load in found], max_other_load)
    kept = 0 if s.noisy else s.kept  # 0: every run was loud, so all were kept
    return {"decode_tok_s": s.median, "range": [s.low, s.high], "kept": kept, "total": s.total}


def run_speculative_bench(args: argparse.Namespace, profile: Profile) -> int:
    record = measure(args, profile)
    if args.json:
        print(json.dumps(record))
        return 0
    step = record["decode_step"]
    sampled = "greedy" if record["sampling"] == "greedy" else "sampled (the profile's chain)"
    if record["compile_s"] is not None:
        step += f", built in {record['compile_s']:.0f} s before timing"
    print(
        f"{record['model']}: {sampled} replies of up to {record['tokens']} tokens, "
        f"{record['runs']} runs per mode, alternating; {record['threads']} threads; "
        f"decode step {step}; median (range)"
    )
    rows = [["task", "plain (tok/s)", "prompt-lookup (tok/s)", "ratio", "accepted", "same"]]
    for name, t in record["tasks"].items():
        cells = []
        for mode in MODES:
            s = t[mode]
            noisy = " (noisy)" if not s["kept"] else ""
            low, high = s["range"]
            cells.append(f"{s['decode_tok_s']:.1f} ({low:.1f}-{high:.1f}){noisy}")
        same = "yes" if t["identical"] else "NO"
        rows.append([name, *cells, f"{t['ratio']:.2f}x", f"{t['acceptance']:.0%}", same])
    print(text_table(rows))
    print(
        "accepted: drafted tokens the model agreed with; same: the two replies were the same "
        "tokens; (noisy): every run was taken while other processes used over "
        f"{args.max_other_load:.0%} of the CPU"
    )
    return 0
