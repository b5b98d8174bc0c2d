"""Decode tokens/s in the Textual app against the headless path, interleaved in one process.

    python scripts/tui_throughput.py [--runs 3] [--tokens 160] [--dtype auto]

Each run answers the same prompt greedily (a fixed number of tokens) once through the app
(headless `run_test`, real widgets, real engine thread and queue) and once through
`ChatSession.send`, the engine without any front end; prints the medians and their ratio.
Every measurement runs in its own fresh process, alternating app and ask: two torch thread
pools in one process (a finished run's and the next one's) would slow both down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

from engine import ChatSession, Done, Profile, load_config, load_profile_model, resolve_profile
from tui.app.app import make_app
from tui.app.messages import PromptSubmitted

PROMPT = "Write a long story about a dragon who learns to read."


async def app_run(overrides: dict[str, object]) -> float:
    app = make_app(None, None, overrides, cursor_blink=False)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = app.screen
        while screen.stats.model is None:  # type: ignore[attr-defined]
            await pilot.pause(0.1)
        screen.post_message(PromptSubmitted(PROMPT))
        await pilot.pause(0.2)
        deadline = time.monotonic() + 300
        while screen.stats.streaming or screen.stats.last is None:  # type: ignore[attr-defined]
            # a plain sleep: Pilot.pause would force a layout and a full repaint every time,
            # work the app never does by itself
            await asyncio.sleep(0.1)
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from the app")
        return float(screen.stats.last.decode_tok_s)  # type: ignore[attr-defined]


def ask_run(profile: Profile) -> float:
    session = ChatSession(load_profile_model(profile), profile.system_prompt, profile.chat_format)
    events = session.send(PROMPT, profile.sampling, profile.max_new_tokens)
    done = [e for e in events if isinstance(e, Done)][0]
    return done.metrics.decode_tok_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tokens", type=int, default=160)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--worker", choices=["app", "ask"], help=argparse.SUPPRESS)
    a = p.parse_args()
    overrides: dict[str, object] = {
        "temperature": 0.0,
        "repeat_penalty": 1.0,
        "max_new_tokens": a.tokens,
        "dtype": a.dtype,
        "model": "",
        # no background compile: a run too short for it to finish would only share the CPU
        # with it, and its thread still running at exit aborts the worker
        "compile": False,
    }
    if a.worker == "app":
        print(json.dumps(asyncio.run(app_run(overrides))))
        return
    if a.worker == "ask":
        print(json.dumps(ask_run(resolve_profile(load_config(None), None, overrides))))
        return

    def worker(kind: str) -> float:
        cmd = [sys.executable, __file__, "--worker", kind, "--tokens", str(a.tokens)]
        out = subprocess.run([*cmd, "--dtype", a.dtype], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{kind} worker failed: {out.stderr.strip().splitlines()[-1:]}")
        return float(out.stdout.strip().splitlines()[-1])

    tui: list[float] = []
    ask: list[float] = []
    for i in range(a.runs):
        tui.append(worker("app"))
        ask.append(worker("ask"))
        print(f"run {i + 1}: app {tui[-1]:.1f} tok/s, ask {ask[-1]:.1f} tok/s", flush=True)
    t, k = statistics.median(tui), statistics.median(ask)
    print(f"median decode: app {t:.1f} tok/s, ask {k:.1f} tok/s, ratio {t / k:.2f}")


if __name__ == "__main__":
    main()
