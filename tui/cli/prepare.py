"""`llama-tui prepare`: a profile's first-start work, done now and waited for.

A first start writes the prepared-weights cache and builds the compiled decode step in a
background process while replies decode eagerly; `ask` builds no step at all, as its process
ends with the reply. `prepare` does both in the foreground, so the next `ask`, chat or app
start loads them (milliseconds) and decodes on the compiled step from its first token. With
``speculative`` on, the verify step for drafts (engine/speculative.py) is built too. One line
per step on stderr; exit 0 when everything is ready (nothing to do included).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator

from engine import (
    Profile,
    UserError,
    compile_decode_step,
    compile_supported,
    compile_wanted,
    first_line,
    load_profile_model,
)


def say(text: str) -> None:
    print(f"llama-tui: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def ticking(text: str) -> Iterator[None]:
    """``text`` as one line while the block runs; on a terminal, with the seconds so far,
    redrawn each second (the build takes a minute or two with nothing else to show)."""
    if not sys.stderr.isatty():
        say(text)
        yield
        return
    stop, t0 = threading.Event(), time.monotonic()

    def tick() -> None:
        while True:
            shown = f"\rllama-tui: {text} {time.monotonic() - t0:.0f} s"
            print(shown, end="", file=sys.stderr, flush=True)
            if stop.wait(1.0):
                return

    thread = threading.Thread(target=tick, name="llama-tui-ticker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        print(file=sys.stderr, flush=True)  # the line stays, ended


def run_prepare(profile: Profile) -> int:
    if profile.backend == "openai":
        where = f"the server at {profile.base_url}"
        say(f"profile {profile.name!r} runs on {where}: nothing to prepare here")
        return 0
    t0 = time.perf_counter()
    loaded = load_profile_model(profile, build_step=False)  # a step in the cache is loaded
    model = loaded.model
    say(
        f"model {loaded.path.name} loaded in {time.perf_counter() - t0:.1f} s "
        f"({loaded.weights}); weights cache: {loaded.weights_cache}"
    )
    if not compile_wanted(profile.compile):
        say("compiled decode step: off (compile = false, or LLAMA_TUI_COMPILE=0)")
    elif not compile_supported(model):
        say("compiled decode step: not used by this placement (it is for 4-bit blocks on CPU)")
    else:
        if model.decode_step is not None:
            say("compiled decode step: ready (already built)")
        else:
            built = build_step(
                "compiled decode step",
                "1-2",
                "decode on the eager step",
                lambda: compile_decode_step(model),
            )
            say(f"compiled decode step: built in {built:.0f} s; later starts load it at once")
        if profile.speculative != "off":  # drafts are checked by a step of their own
            what = "compiled verify step (speculative drafts)"
            if model.verify_step is not None:
                say(f"{what}: ready (already built)")
            else:
                built = build_step(
                    what,
                    "2-3",
                    "decode on the compiled step without drafts",
                    lambda: compile_decode_step(model, verify=True),
                )
                say(f"{what}: built in {built:.0f} s")
    return 0


def build_step(what: str, minutes: str, meanwhile: str, build: Callable[[], float]) -> float:
    """Run ``build`` (compile_decode_step) under a ticking line; its failure is one line that
    says how replies ``meanwhile`` decode."""
    try:
        with ticking(f"{what}: building, about {minutes} minutes on 2 cores ..."):
            return build()
    except Exception as exc:  # noqa: BLE001 - the compiler's fault is one line, not a trace
        raise UserError(
            f"the {what} could not be built ({first_line(exc)}); replies {meanwhile}: "
            "install a C++ compiler (g++), or set compile = false"
        ) from None
