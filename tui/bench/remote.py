"""`llama-tui bench --remote PROFILE`: the standard prompt through a remote profile and the
local engine, side by side, each turn measured the way the app measures it (client-side time
to first token and decode tok/s; the server's own figures where it reports them).

Both sides answer the same chat prompt greedily from a fresh conversation each run; run 1 is
cold, later runs find the prompt in the engine's (or the server's) prefix cache, so the table
gives run 1's time to first token next to the medians.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tui.bench.common import text_table

if TYPE_CHECKING:
    from engine import Profile

PROMPT = "Write a short story about a robot who learns to paint. Give it a title."


def measure(profile: Profile, tokens: int, runs: int) -> dict[str, Any]:
    """Run the prompt `runs` times on `profile`; its first-run and median figures."""
    from engine import (
        ClearRequest,
        Done,
        EngineQueue,
        Failed,
        GenerationRequest,
        LoadRequest,
        ModelReady,
        ProfileBackend,
        ServerError,
        UserError,
    )

    queue = EngineQueue(ProfileBackend(1))
    try:
        name = ""
        for event in queue.submit(LoadRequest(profile)):
            if isinstance(event, Failed):
                raise (ServerError if event.server else UserError)(event.message)
            if isinstance(event, ModelReady):
                name = event.info.name
        dones: list[Done] = []
        for _ in range(runs):
            list(queue.submit(ClearRequest()))
            ask = GenerationRequest("chat", PROMPT, profile.sampling, tokens)
            for event in queue.submit(ask):
                if isinstance(event, Failed):
                    raise (ServerError if event.server else UserError)(event.message)
                if isinstance(event, Done):
                    dones.append(event)
    finally:
        queue.close()
    m = [d.metrics for d in dones]
    return {
        "model": name,
        "ttft_first_ms": m[0].ttft_s * 1000,
        "ttft_ms": statistics.median(x.ttft_s for x in m) * 1000,
        "decode_tok_s": statistics.median(x.decode_tok_s for x in m),
        "server_decode_tok_s": statistics.median(x.server_decode_tok_s for x in m),
        "generated": statistics.median(x.generated_tokens for x in m),
        "cached": m[-1].cached_tokens,
        "source": m[0].source or "local engine",
    }


def run_remote_bench(args: argparse.Namespace, local: Profile, remote: Profile) -> int:
    from engine import SamplingSettings, UserError

    if remote.backend != "openai":
        raise UserError(f"bench --remote {remote.name}: that profile is not a remote one")
    if local.backend != "local":
        raise UserError("bench --remote: --profile must name a local profile to compare with")
    if args.tokens < 2 or args.runs < 1:
        raise UserError("bench needs --tokens >= 2 and --runs >= 1")
    greedy = SamplingSettings(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    # the local side decodes eagerly: a background compile (the profile's `compile`) would
    # share the CPU with the timed runs and leave some of them compiled (bench --vs times both)
    eager = replace(local, sampling=greedy, compile=False)
    sides = [
        (f"local ({local.name})", measure(eager, args.tokens, args.runs)),
        (
            f"remote ({remote.name})",
            measure(replace(remote, sampling=greedy), args.tokens, args.runs),
        ),
    ]
    rows = [["", *(label for label, _ in sides)]]
    for key, label, fmt in (
        ("model", "model", "{}"),
        ("ttft_first_ms", "TTFT, run 1 (ms)", "{:.0f}"),
        ("ttft_ms", "TTFT, median (ms)", "{:.0f}"),
        ("decode_tok_s", "decode, client (tok/s)", "{:.1f}"),
        ("server_decode_tok_s", "decode, server (tok/s)", "{:.1f}"),
        ("generated", "reply tokens", "{:.0f}"),
        ("cached", "cached prompt tokens, last run", "{}"),
    ):
        rows.append(
            [
                label,
                *(
                    fmt.format(fig[key]) if fig[key] != 0 or key == "cached" else "—"
                    for _, fig in sides
                ),
            ]
        )
    print(f"prompt: {PROMPT!r}, greedy, up to {args.tokens} tokens, {args.runs} runs")
    print(text_table(rows))
    for label, fig in sides:
        print(f"{label}: {fig['source']}")
    print("the local side runs its eager decode step (compile off for this bench)")
    return 0
