"""`llama-tui bench --conversation`: time to first token across a long, trimmed chat.

A scripted conversation of equal-length user messages runs twice on the same model, greedy:
once as the app runs it (the KV cache kept across turns, trimmed turns shifted in place) and
once as a cache-less baseline that re-prefills the whole (trimmed) history every turn, as
transformers' ``generate`` does without a cache. Each is repeated ``--runs`` times and every
turn reports its median time to first token (TTFT, from the call to the first token, trimming
included), so the shared machine's noise shows less.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from engine import (
    ChatSession,
    Done,
    LoadedModel,
    Profile,
    SamplingSettings,
    Stamp,
    TokenEvent,
    load_profile_model,
    other_load,
)

CONTEXT_LENGTH = 1024  # small enough that 30 turns trim several times
MAX_NEW_TOKENS = 48
SYSTEM_PROMPT = "You are a helpful gardening assistant. Answer in two or three sentences."
QUESTION = (
    "Question {:02d}: give me one practical tip for keeping a small vegetable garden healthy "
    "through a hot, dry summer, and say briefly why it works."
)  # the digits are single tokens, so every message has the same length


@dataclass(frozen=True)
class Turn:
    ttft_s: float  # from send() to the first token, trimming and prefill included
    prompt_tokens: int
    computed_tokens: int  # prompt tokens run through the model this turn
    context_tokens: int  # tokens in context after the turn
    dropped_messages: int  # messages of the conversation outside the context
    trimmed: bool  # this turn dropped older messages


def questions(turns: int) -> list[str]:
    return [QUESTION.format(i + 1) for i in range(turns)]


def run_conversation(
    loaded: LoadedModel,
    texts: list[str],
    settings: SamplingSettings,
    max_new_tokens: int,
    cached: bool,
) -> list[Turn]:
    """One pass over ``texts`` in a fresh session; ``cached=False`` clears the cache each turn."""
    session = ChatSession(loaded, SYSTEM_PROMPT)
    session.context_shift = cached
    out: list[Turn] = []
    for text in texts:
        if not cached:
            session.cache.truncate(0)
        dropped = session.dropped_messages
        t0 = time.perf_counter()
        first: float | None = None
        done: Done | None = None
        for event in session.send(text, settings, max_new_tokens):
            if first is None and isinstance(event, TokenEvent | Done):
                first = time.perf_counter()
            if isinstance(event, Done):
                done = event
        assert done is not None and first is not None
        m = done.metrics
        out.append(
            Turn(
                ttft_s=first - t0,
                prompt_tokens=m.prompt_tokens,
                computed_tokens=m.computed_tokens,
                context_tokens=m.context_used,
                dropped_messages=session.dropped_messages,
                trimmed=session.dropped_messages > dropped,
            )
        )
    return out


def median_turns(runs: list[list[Turn]]) -> list[Turn]:
    """Per turn, the median TTFT over runs; the counts of the first run (greedy: all equal)."""
    return [
        replace(turns[0], ttft_s=statistics.median(t.ttft_s for t in turns))
        for turns in zip(*runs, strict=True)
    ]


def ratio(turns: list[Turn]) -> float:
    """TTFT of the last turn over that of turn 2 (turn 1 has no cache to reuse)."""
    return turns[-1].ttft_s / turns[1].ttft_s


def format_turns(ours: list[Turn], base: list[Turn]) -> str:
    head = "turn | TTFT ms | computed | context | dropped | baseline TTFT ms | computed | dropped"
    lines = [head, "-" * len(head)]
    for i, (a, b) in enumerate(zip(ours, base, strict=True)):
        mark = "*" if a.trimmed else " "
        lines.append(
            f"{i + 1:>3}{mark} | {a.ttft_s * 1000:7.0f} | {a.computed_tokens:8d} | "
            f"{a.context_tokens:7d} | {a.dropped_messages:7d} | {b.ttft_s * 1000:16.0f} | "
            f"{b.computed_tokens:8d} | {b.dropped_messages:7d}"
        )
    return "\n".join(lines)


def summary(ours: list[Turn], base: list[Turn]) -> dict[str, float]:
    later = slice(1, None)  # turns 2.. (turn 1 prefills everything in both)
    mean_ours = statistics.fmean(t.ttft_s for t in ours[later])
    mean_base = statistics.fmean(t.ttft_s for t in base[later])
    return {
        "ttft_last_over_turn2": ratio(ours),
        "baseline_ttft_last_over_turn2": ratio(base),
        "speedup_last_turn": base[-1].ttft_s / ours[-1].ttft_s,
        "speedup_mean_turns_2_on": mean_base / mean_ours,
        "trims": sum(t.trimmed for t in ours),
        "trim_turn_ttft_max_s": max((t.ttft_s for t in ours if t.trimmed), default=0.0),
        "plain_turn_ttft_max_s": max(t.ttft_s for t in ours[later] if not t.trimmed),
    }


def run_conversation_bench(args: argparse.Namespace, profile: Profile) -> int:
    import torch

    from engine import UserError

    if args.turns < 2 or args.runs < 1:
        raise UserError("bench --conversation needs --turns >= 2 and --runs >= 1")
    if args.context_length is None:  # the bench's own defaults, unless a flag set them
        profile = replace(profile, context_length=CONTEXT_LENGTH)
    if args.max_new_tokens is None:
        profile = replace(profile, max_new_tokens=MAX_NEW_TOKENS)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_profile_model(profile)
    settings = replace(profile.sampling, temperature=0.0, seed=0)
    texts, n = questions(args.turns), profile.max_new_tokens
    run_conversation(loaded, texts[:2], settings, 8, cached=True)  # warm-up
    window = Stamp.now()
    passes: dict[bool, list[list[Turn]]] = {True: [], False: []}
    for cached in (True, False):
        for r in range(args.runs):
            name = "cached" if cached else "baseline"
            print(f"bench: {name} run {r + 1}/{args.runs} ...", file=sys.stderr, flush=True)
            passes[cached].append(run_conversation(loaded, texts, settings, n, cached))
    ours, base = median_turns(passes[True]), median_turns(passes[False])
    load = other_load(window, Stamp.now())
    cores = torch.get_num_threads()
    figures = summary(ours, base)
    meta: dict[str, Any] = {
        "model": loaded.path.name,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "turns": args.turns,
        "context_length": profile.context_length,
        "max_new_tokens": n,
        "runs": args.runs,
        "threads": cores,
        "other_load": load,
    }
    if args.json:
        record = {
            **meta,
            **figures,
            "ours": [asdict(t) for t in ours],
            "baseline": [asdict(t) for t in base],
        }
        print(json.dumps(record))
        return 0
    print(
        f"{meta['model']} {meta['dtype']}: {args.turns} turns, context {meta['context_length']}, "
        f"{n} greedy tokens per reply, median of {args.runs} runs, {cores} threads"
    )
    print(format_turns(ours, base))
    print("* = a turn that dropped older messages (cache shifted; baseline re-prefills anyway)")
    print(
        f"TTFT turn {args.turns} / turn 2: cached {figures['ttft_last_over_turn2']:.2f}x, "
        f"baseline {figures['baseline_ttft_last_over_turn2']:.2f}x; speed-up of the cache: "
        f"{figures['speedup_last_turn']:.1f}x at turn {args.turns}, "
        f"{figures['speedup_mean_turns_2_on']:.1f}x mean over turns 2-{args.turns}"
    )
    if load > 0.05:
        print(
            f"warning: other processes used {load:.0%} of the CPU during the timed runs: "
            "timings are noisy"
        )
    return 0
