"""The decode step through torch.compile (inductor, C++ wrapper), built while the chat runs.

An eager decode step spends about a third of its time in small ops (norms, rotations, casts,
residual adds) and Python dispatch around the int4 kernels; inductor fuses them. Compiling takes
a minute or two (about half a minute with a warm on-disk cache), so nothing waits for it:
``compile_in_background`` compiles ``generate.token_logits`` in a daemon thread, warms it up on a
scratch KV cache, then sets ``model.decode_step``, which ``generate.decode_one_token`` uses from
the next token on. The compiled step only ever runs what was compiled (``torch._dynamo.run``),
and checks no guards (compiled_token_logits says why that is safe here). Greedy tokens are the
same either way (tests/engine/test_compiled.py).

Inductor keeps its on-disk cache under the llama-tui user cache folder, so the second start only
traces. ``compile = false`` in a profile, or LLAMA_TUI_COMPILE=0, keeps the eager step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import background
from engine.generate import COMPILED_FROM, token_logits
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.quantized import Int4Linear

ENV_COMPILE = "LLAMA_TUI_COMPILE"  # "0" (or "false", "off") turns the compiled step off
ENV_CACHE_DIR = "LLAMA_TUI_CACHE_DIR"  # the llama-tui cache folder (default: the user's)
WARMUP_LEN = 11  # scratch KV cache positions; a length no model dimension has (see below)


def compile_wanted(setting: bool) -> bool:
    """The profile's ``compile`` unless LLAMA_TUI_COMPILE turns it off."""
    return setting and os.environ.get(ENV_COMPILE, "1").lower() not in ("0", "false", "off")


def compile_supported(model: Transformer) -> bool:
    """The compiled step is for the CPU path with 4-bit blocks (the default placement)."""
    on_cpu = model.norm.weight.device.type == "cpu"
    return on_cpu and any(isinstance(m, Int4Linear) for m in model.modules())


def inductor_cache_dir() -> Path:
    """$LLAMA_TUI_CACHE_DIR/inductor, else the user cache folder's (platformdirs)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env) / "inductor"
    import platformdirs

    return platformdirs.user_cache_path("llama-tui") / "inductor"


@dataclass
class CompileStatus:
    """What the background build did, for a status line (filled in by the thread)."""

    ready: threading.Event
    seconds: float = 0.0  # compile + warm-up time, once ready (or failed)
    error: str | None = None  # why the step stayed eager (no C++ compiler, ...)


def compiled_token_logits() -> Callable[..., torch.Tensor]:
    """generate.token_logits through inductor: any position (dynamic=True), the C++ wrapper
    (kernels called without Python in between), one compile thread (no worker pool).

    It checks no guards when called. Dynamo's guards (one per weight tensor, module attribute
    and cache buffer) took ~1 ms of a ~9 ms SmolLM2 step, and they only tell apart calls that
    cannot happen here: the step is compiled from a code object of its own (a copy of
    token_logits'), and dynamo keeps graphs per code object, so it holds this model's graph and
    no other. It is called only by generate.decode_one_token, with the model it was built for,
    that model's caches, a [1, 1] token and a position from COMPILED_FROM on.
    """
    own = token_logits.__code__.replace()  # equal, not the same object: a graph cache of its own
    fn = types.FunctionType(own, token_logits.__globals__, "token_logits")
    fn.__defaults__ = token_logits.__defaults__
    return torch.compile(
        fn,
        dynamic=True,
        options={
            "cpp_wrapper": True,
            "compile_threads": 1,
            "guard_filter_fn": torch.compiler.skip_all_guards_unsafe,
        },
    )


def compile_decode_step(model: Transformer) -> None:
    """Compile and warm up the decode step, then hand it to ``model.decode_step`` (blocking)."""
    # inductor reads its cache folder from the environment, and importing torch._dynamo (or
    # anything that does) fills in /tmp's default, so ours is set, not defaulted
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir())
    import torch._dynamo as dynamo  # imported here: a second or more, only when compiling

    # inductor's notes (fallback kernels, mixed float types) would go to the terminal under the
    # app's screen: they are about speed, which the switch measures anyway
    torch._logging.set_logs(inductor=logging.ERROR)
    warnings.filterwarnings("ignore", module=r"torch\._inductor")
    compiled = compiled_token_logits()
    a, weight = model.args, model.norm.weight
    # inductor gives equal sizes one symbol, so a scratch length equal to a static size (say
    # head_dim / 2 = 8) would pin every cache to that length: WARMUP_LEN is odd and prime
    scratch = KVCache(
        a.n_layers, a.n_kv_heads, a.head_dim, WARMUP_LEN, dtype=weight.dtype, device=weight.device
    )
    with torch.inference_mode():  # as decode_one_token: its token is an inference tensor
        token = torch.zeros(1, 1, dtype=torch.long, device=weight.device)
        token_logits(model, token.expand(1, COMPILED_FROM), 0, scratch)  # prefill, eagerly
        for start in (COMPILED_FROM, COMPILED_FROM + 1):  # a graph for any position from there
            compiled(model, token, start, scratch)
    model.decode_step = dynamo.run(compiled)


def compile_in_background(model: Transformer) -> CompileStatus:
    """Start ``compile_decode_step`` in a daemon thread; the model decodes eagerly meanwhile."""
    status = CompileStatus(threading.Event())

    def build() -> None:
        t0 = time.perf_counter()
        try:
            compile_decode_step(model)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the eager step in place
            status.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            background.done()
        status.seconds = time.perf_counter() - t0
        status.ready.set()

    background.start(threading.Thread(target=build, name="llama-tui-compile", daemon=True))
    return status
