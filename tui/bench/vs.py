"""`llama-tui bench --vs llama.cpp,transformers`: our engine and its peers, side by side.

Every engine runs in processes of its own (tui/bench/workers.py), one at a time, interleaved
(ours, llama.cpp, transformers, ours, ...), on our tokenizer's prompt ids, the same lengths and
threads, greedy (or ``--sampling default``: the profile's sampler chain on every side), with
end-of-sequence ignored. Each sample carries the share of the CPU other processes used while it
was measured; the noise rule drops a sample above ``--max-other-load`` unless that would drop
all of an engine's samples of a metric (then all are kept and the figure is marked noisy).
Figures are medians with their ranges; ratios are ours / peer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import Stamp, other_load
from tui.bench.common import PARITY_TOKENS, parity_of, text_table
from tui.bench.speed import spawn
from tui.bench.workers import LLAMA_CPP, OURS, TRANSFORMERS, Spec

if TYPE_CHECKING:
    from engine import Profile

PEERS = {LLAMA_CPP: "llama_cpp", TRANSFORMERS: "transformers"}  # name -> module to import
PROMPT_TOKENS = 256
RUN_METRICS = ("decode_tok_s", "prefill_tok_s", "ttft_s")  # one sample per timed run
METRICS = (  # key, label, scale, format, higher is better
    ("decode_tok_s", "decode (tok/s)", 1.0, "{:.1f}", True),
    ("prefill_tok_s", "prefill (tok/s)", 1.0, "{:.0f}", True),
    ("ttft_s", "time to first token (ms)", 1000.0, "{:.0f}", False),
    ("start_to_first_token_s", "process start to first token (s)", 1.0, "{:.2f}", False),
    ("peak_rss_mib", "peak RSS (MiB)", 1.0, "{:.0f}", False),
)


@dataclass(frozen=True)
class Sample:
    value: float
    other_load: float  # other processes' share of the CPU while it was measured


@dataclass(frozen=True)
class Summary:
    median: float
    low: float
    high: float
    kept: int  # samples the noise rule kept
    total: int
    noisy: bool  # every sample was over the limit, so all were kept


def samples_of(record: dict[str, Any], spawned: Stamp) -> dict[str, list[Sample]]:
    """One worker's samples per metric: its timed runs, its start, its peak RSS."""
    out = {k: [Sample(r[k], r["other_load"]) for r in record["runs"]] for k in RUN_METRICS}
    first = Stamp(**record["first_token"])  # the worker's clock and CPU time at its first token
    start = Sample(first.at - spawned.at, other_load(spawned, first, own_cpu_s=first.cpu_s))
    out["start_to_first_token_s"] = [start]
    out["peak_rss_mib"] = [Sample(record["peak_rss_bytes"] / 2**20, 0.0)]  # memory, not time
    return out


def summarize(samples: Sequence[Sample], max_other_load: float) -> Summary:
    """The noise rule, then median and range of what is left."""
    quiet = [s for s in samples if s.other_load <= max_other_load]
    used = quiet or list(samples)
    values = [s.value for s in used]
    return Summary(
        statistics.median(values), min(values), max(values), len(used), len(samples), not quiet
    )


def ratio(ours: Summary, peer: Summary) -> float:
    """Ours / peer of the medians (nan when the peer's is 0)."""
    return ours.median / peer.median if peer.median else math.nan


def compare(
    records: Sequence[tuple[dict[str, Any], Stamp]], max_other_load: float
) -> dict[str, dict[str, Summary]]:
    """Per engine (in first-seen order) and metric, the summary over all its processes."""
    pooled: dict[str, dict[str, list[Sample]]] = {}
    for record, spawned in records:
        mine = pooled.setdefault(record["engine"], {})
        for key, found in samples_of(record, spawned).items():
            mine.setdefault(key, []).extend(found)
    return {
        engine: {key: summarize(found, max_other_load) for key, found in metrics.items()}
        for engine, metrics in pooled.items()
    }


def to_json(
    summaries: dict[str, dict[str, Summary]], weights: dict[str, str], meta: dict[str, Any]
) -> dict[str, Any]:
    """engines.NAME.{metric: median, ranges, samples, noisy} and ratios.PEER.{metric}."""
    engines = {}
    for name, metrics in summaries.items():
        engines[name] = {
            "weights": weights[name],
            **{key: s.median for key, s in metrics.items()},
            "ranges": {key: [s.low, s.high] for key, s in metrics.items()},
            "samples": {key: {"kept": s.kept, "total": s.total} for key, s in metrics.items()},
            "noisy": [key for key, s in metrics.items() if s.noisy],
        }
    ours = summaries[OURS]
    ratios = {
        peer: {key: ratio(ours[key], s) for key, s in metrics.items()}
        for peer, metrics in summaries.items()
        if peer != OURS
    }
    return {**meta, "engines": engines, "ratios": ratios}


def format_table(summaries: dict[str, dict[str, Summary]], weights: dict[str, str]) -> str:
    peers = [p for p in summaries if p != OURS]
    head = ["metric", *(f"{e} {weights[e]}" for e in summaries), *(f"ours/{p}" for p in peers)]
    lines = [head]
    for key, label, scale, fmt, _ in METRICS:
        row = [label]
        for engine in summaries:
            s = summaries[engine][key]
            low, mid, high = (fmt.format(v * scale) for v in (s.low, s.median, s.high))
            mark = " (noisy)" if s.noisy else ""
            row.append((mid if s.total == 1 else f"{mid} ({low}-{high})") + mark)
        for peer in peers:
            ours, theirs = summaries[OURS][key], summaries[peer][key]
            mark = " (noisy)" if ours.noisy or theirs.noisy else ""
            row.append(f"{ratio(ours, theirs):.2f}x{mark}")
        lines.append(row)
    return text_table(lines)


def peers_of(text: str) -> list[str]:
    """The --vs list, checked: known names, each installed."""
    from engine import UserError

    peers = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    for peer in peers:
        if peer not in PEERS:
            raise UserError(f"--vs: unknown engine {peer!r}; one or more of {', '.join(PEERS)}")
        if importlib.util.find_spec(PEERS[peer]) is None:
            raise UserError(
                f"--vs {peer}: {PEERS[peer]} is not installed (bash scripts/install.sh --test)"
            )
    if not peers:
        raise UserError("--vs: name at least one engine: llama.cpp, transformers")
    return peers


def _sampling(args: argparse.Namespace, profile: Profile) -> dict[str, Any] | None:
    """None for greedy; the profile's sampler settings (seed 0 unless set) for 'default'."""
    if args.sampling == "greedy":
        return None
    settings = profile.sampling
    return asdict(replace(settings, seed=0 if settings.seed is None else settings.seed))


def run_vs(args: argparse.Namespace, profile: Profile) -> int:
    import torch

    from engine import UserError, default_model_path, profile_to_dict, resolve_device

    peers = peers_of(args.vs)
    prompt_tokens = args.prompt_tokens or PROMPT_TOKENS
    if args.tokens < 2 or args.runs < 1 or args.processes < 1 or prompt_tokens < 1:
        raise UserError("bench --vs needs --tokens >= 2, --runs >= 1, --processes >= 1")
    model = Path(profile.model) if profile.model else default_model_path()
    threads = args.threads or torch.get_num_threads()
    ours_spec = Spec(
        OURS,
        str(model),
        threads,
        args.tokens,
        args.runs,
        prompt_tokens=prompt_tokens,
        sampling=_sampling(args, profile),
        profile=profile_to_dict(profile),
        device=profile.device,
    )
    order = [e for _ in range(args.processes) for e in (OURS, *peers)]
    records: list[tuple[dict[str, Any], Stamp]] = []
    ids: list[int] = []
    for i, engine in enumerate(order):
        spec = ours_spec if engine == OURS else replace(ours_spec, engine=engine, ids=ids)
        spawned = Stamp.now()
        record = spawn(spec, f"{engine} (process {i // (1 + len(peers)) + 1}/{args.processes})")
        if engine == OURS and ids and record["prompt_ids"] != ids:
            raise UserError("bench --vs: our tokenizer gave different prompt ids in two runs")
        ids = record["prompt_ids"]
        records.append((record, spawned))
    summaries = compare(records, args.max_other_load)
    weights = {r["engine"]: r["weights"] for r, _ in records}
    first = {r["engine"]: r["tokens"] for r, _ in reversed(records)}  # each one's 1st process
    greedy = args.sampling == "greedy"
    ours = [r for r, _ in records if r["engine"] == OURS]
    meta: dict[str, Any] = {
        "model": model.name,
        "prompt_tokens": prompt_tokens,
        "tokens": args.tokens,
        "sampling": args.sampling,
        "sampler": ours_spec.sampling,
        "threads": threads,
        "device": str(resolve_device(profile.device)),  # llama-tui's and transformers'
        "runs_per_process": args.runs,
        "processes": args.processes,
        "max_other_load": args.max_other_load,
        "order": order,
        "parity": {p: parity_of(first[OURS], first[p]) for p in peers} if greedy else {},
        "decode_step": ours[0]["decode_step"],  # llama-tui's timed runs: "compiled" or "eager"
        "compile_s": [r["prepare_s"] for r in ours],  # per process, after its first token
        # prompt chunks of this many tokens and more ran as dense bfloat16 GEMMs (measured
        # once per machine, engine/dense_prefill.py); None: all on the int4 kernel
        "dense_prefill_from": ours[0].get("dense_prefill_from"),
    }
    if args.json:
        print(json.dumps(to_json(summaries, weights, meta)))
        return 0
    _print_report(summaries, weights, meta)
    return 0


def _print_report(
    summaries: dict[str, dict[str, Summary]], weights: dict[str, str], meta: dict[str, Any]
) -> None:
    chain = "greedy" if meta["sampler"] is None else "the profile's default sampler chain"
    print(
        f"{meta['model']}: {meta['prompt_tokens']}-token prompt, {meta['tokens']} tokens "
        f"({chain}, end-of-sequence ignored), {meta['threads']} threads, {meta['device']}; "
        f"processes x timed runs per engine: {meta['processes']} x {meta['runs_per_process']}, "
        "interleaved; median (range)"
    )
    print(format_table(summaries, weights))
    print(
        "ours/peer: above 1 is better for tok/s, below 1 for ms, s and MiB; "
        "start to first token and peak RSS: one sample per process"
    )
    kept = ", ".join(
        f"{e} {m['decode_tok_s'].kept}/{m['decode_tok_s'].total} runs, "
        f"{m['start_to_first_token_s'].kept}/{m['start_to_first_token_s'].total} starts"
        for e, m in summaries.items()
    )
    print(
        f"noise rule: samples taken while other processes used over "
        f"{meta['max_other_load']:.0%} of the CPU are dropped; kept {kept}"
    )
    if any(s.noisy for m in summaries.values() for s in m.values()):
        print(
            "warning: every sample of the figures marked (noisy) was over the limit, so all "
            "were kept: the machine was busy and those figures (and their ratios) are not to "
            "be trusted"
        )
    if meta["decode_step"] == "compiled":
        built = ", ".join(f"{s:.0f}" for s in meta["compile_s"])
        print(
            "llama-tui decoded through its compiled step, built or loaded from the cache after "
            f"the first token (seconds per process: {built}; 0 = loaded from the cache)"
        )
    rows = meta["dense_prefill_from"]
    if rows is not None:
        print(
            f"llama-tui's prefill: prompt chunks of {rows}+ tokens as dense bfloat16 GEMMs, "
            "shorter ones on the int4 kernel (the crossing measured on this machine)"
        )
    if meta["device"] != "cpu" and LLAMA_CPP in summaries:
        print(f"note: llama.cpp ran on the CPU (a CPU build), the others on {meta['device']}")
    for peer, verdict in meta["parity"].items():
        print(f"parity: first {PARITY_TOKENS} greedy tokens, llama-tui vs {peer}: {verdict}")
