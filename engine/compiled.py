"""The decode step compiled ahead of time by AOTInductor, built in a process of its own.

An eager decode step spends about a third of its time in small ops (norms, rotations, casts,
residual adds) and Python dispatch around the int4 kernels; inductor fuses them. The step
(``generate.token_logits`` for one token) is exported with torch.export and compiled by
AOTInductor into a package (a shared library, a few MB) that takes the model's weights, the rope
table and the KV cache as inputs: it holds no weights, so it depends only on the model's shapes,
and one build serves every later start (``step_package`` names it by those shapes, the code
that shapes the step, torch's version and the CPU).

Building takes a minute or two. It used to run in a thread of the chat's own process, where
dynamo's tracing held the GIL and eager decoding crawled at 0.2-5 tokens/s until it was done;
``compile_in_background`` now runs it in a child process (engine/step_build.py, at low CPU
priority) while the chat decodes eagerly, then loads the package (milliseconds) and sets
``model.decode_step``: ``generate.decode_one_token`` uses it from the next token on.
A start that finds the package loads it at once. Greedy tokens are the same either way
(tests/engine/test_compiled.py). ``compile = false`` in a profile, or LLAMA_TUI_COMPILE=0,
keeps the eager step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import background
from engine.generate import COMPILED_FROM, token_logits
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.quantized import Int4Linear, cpu_flags
from engine.speculative import VERIFY_TOKENS
from engine.user_cache import cache_dir, write_atomically

log = logging.getLogger(__name__)

ENV_COMPILE = "LLAMA_TUI_COMPILE"  # "0" (or "false", "off") turns the compiled step off
STEP_VERSION = 1  # bump when what a package takes or returns changes
# modules whose code decides what the compiled step computes: a change to any is a new package
STEP_MODULES = (
    "engine.compiled",
    "engine.generate",
    "engine.kv_cache",
    "engine.model",
    "engine.quantized",
    "engine.rope",
    "engine.sampling",
)
# example sizes for export: a position, a cache length and a rope length no model dimension has
# (export would tie a size equal to a static one, say head_dim / 2, to it), primes and distinct,
# with room in the cache for a verify step's tokens after the position (VERIFY_MAX at most)
EXAMPLE_POS, EXAMPLE_CACHE, EXAMPLE_ROPE = 11, 19, 23
VERIFY_MAX = EXAMPLE_CACHE - EXAMPLE_POS - 1
BUILD_TIMEOUT_S = 1800  # a build process still running after this is stopped
KEEP_STEPS = 8  # packages kept in the cache folder's steps/, the ones used last
TEMP_MAX_AGE_S = 24 * 3600  # a build's temp file this old was left by a killed build


def compile_wanted(setting: bool) -> bool:
    """The profile's ``compile`` unless LLAMA_TUI_COMPILE turns it off."""
    return setting and os.environ.get(ENV_COMPILE, "1").lower() not in ("0", "false", "off")


def compile_supported(model: Transformer) -> bool:
    """The compiled step is for the CPU path with 4-bit blocks (the default placement)."""
    on_cpu = model.norm.weight.device.type == "cpu"
    return on_cpu and any(isinstance(m, Int4Linear) for m in model.modules())


def inductor_cache_dir() -> Path:
    """Inductor's working folder for builds: the llama-tui cache folder's ``inductor``."""
    return cache_dir() / "inductor"


def step_weights(model: Transformer) -> list[tuple[str, torch.Tensor]]:
    """The model's parameters and buffers in a fixed order: the package's weight inputs."""
    return [*model.named_parameters(), *model.named_buffers()]


def step_key(model: Transformer) -> str:
    """What a package depends on: the shapes, strides and dtypes of everything it takes, the
    model's sizes, the step's code, torch's version, the thread count and the CPU's flags."""
    digest = hashlib.sha256()
    for name in STEP_MODULES:
        source = getattr(sys.modules.get(name), "__file__", None)
        digest.update(Path(source).read_bytes() if source else name.encode())
    described = {
        "version": STEP_VERSION,
        "torch": torch.__version__,
        "args": json.dumps(asdict(model.args), sort_keys=True, default=str),
        "rope": str(model.rope.dtype),
        "activations": str(model.norm.weight.dtype),
        "threads": torch.get_num_threads(),  # inductor parallelises loops for this many
        "weights": [
            (n, list(t.shape), list(t.stride()), str(t.dtype)) for n, t in step_weights(model)
        ],
    }
    digest.update(json.dumps(described, sort_keys=True).encode())
    digest.update(" ".join(cpu_flags()).encode())  # the kernels' instruction set
    return digest.hexdigest()[:24]


def step_package(model: Transformer, tokens: int = 1) -> Path:
    """Where this model's compiled step for ``tokens`` tokens is kept: the llama-tui cache
    folder's ``steps`` (the one-token step, or the verify step: ``-verify4`` for 4 tokens)."""
    suffix = "" if tokens == 1 else f"-verify{tokens}"
    return cache_dir() / "steps" / f"{step_key(model)}{suffix}.pt2"


class _Step(nn.Module):
    """token_logits for one token, with everything it reads passed in: export's root module.

    The model is kept out of the module tree (no parameters of its own to bake in): its
    parameters and buffers are swapped for the weight inputs while the step runs, each module
    once (a tied table is one module under two names). A position travels as the length of an
    empty tensor: the package takes tensors only, and an int would be a constant of the graph.
    """

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.__dict__["model"] = model  # unregistered
        index = {id(t): i for i, (_, t) in enumerate(step_weights(model))}
        # (the module's parameter or buffer table, the name in it, the weight input's index)
        tables: list[dict[str, Any]] = [
            table for m in model.modules() for table in (m._parameters, m._buffers)
        ]
        self.slots = [
            (table, name, index[id(t)])
            for table in tables
            for name, t in table.items()
            if t is not None
        ]

    def forward(
        self,
        token: torch.Tensor,  # [1, T]: T tokens (1, or a verify step's fixed count)
        position: torch.Tensor,  # [pos, 0]
        rope: torch.Tensor,  # [R, Dh/2] complex
        keys: tuple[torch.Tensor, ...],  # per layer [1, KV, S, Dh], written at pos
        values: tuple[torch.Tensor, ...],
        weights: tuple[torch.Tensor, ...],  # step_weights' tensors, in order
    ) -> torch.Tensor:
        model: Transformer = self.__dict__["model"]
        saved = [(table, name, table[name]) for table, name, _ in self.slots]
        rope_saved, model.rope = model.rope, rope
        try:
            for table, name, i in self.slots:
                table[name] = weights[i]
            cache = KVCache.over(keys, values)
            return token_logits(model, token, position.shape[0], cache)  # [1, T, V]
        finally:
            model.rope = rope_saved
            for table, name, original in saved:
                table[name] = original


def build_package(model: Transformer, target: Path, tokens: int = 1) -> None:
    """Export and compile the decode step of ``model`` for ``tokens`` tokens into ``target``
    (blocking; a minute or two on 2 cores). Raises what torch raises; a failed build leaves no
    file behind."""
    if not 1 <= tokens <= VERIFY_MAX:
        raise ValueError(f"a compiled step takes 1 to {VERIFY_MAX} tokens, not {tokens}")
    from torch.export import Dim, export

    # inductor reads its working folder from the environment, and importing torch._dynamo (or
    # anything that does) fills in /tmp's default, so ours is set, not defaulted
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir())
    import torch._inductor  # imported here: seconds, and only a build needs it

    # inductor's notes (fallback kernels, complex operators) are about speed, measured anyway
    torch._logging.set_logs(inductor=logging.ERROR)
    warnings.filterwarnings("ignore", module=r"torch\._inductor")
    a, weight = model.args, model.norm.weight
    cache = KVCache(
        a.n_layers, a.n_kv_heads, a.head_dim, EXAMPLE_CACHE, dtype=weight.dtype, device="cpu"
    )
    for buffer in (*cache.k, *cache.v):
        buffer.zero_()
    weights = tuple(t for _, t in step_weights(model))
    example = (
        torch.zeros(1, tokens, dtype=torch.long),
        torch.empty(EXAMPLE_POS, 0),
        model.rope[:EXAMPLE_ROPE].clone(),
        tuple(cache.k),
        tuple(cache.v),
        weights,
    )
    length = Dim("cache", min=COMPILED_FROM + tokens + 1)
    dims = (
        None,
        {0: Dim("position", min=COMPILED_FROM)},
        {0: Dim("rope", min=COMPILED_FROM + tokens + 1)},
        tuple({2: length} for _ in cache.k),
        tuple({2: length} for _ in cache.v),
        tuple(None for _ in weights),
    )

    def write(temp: Path) -> None:
        named = temp.with_name(temp.name + ".pt2")  # the packager takes only names in .pt2
        try:
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(named), inductor_configs={"compile_threads": 1}
            )
            os.replace(named, temp)
        finally:
            named.unlink(missing_ok=True)

    with warnings.catch_warnings():  # torch's own deprecation notes (pytree specs), not ours
        warnings.simplefilter("ignore", FutureWarning)
        program = export(_Step(model), example, dynamic_shapes=dims, strict=False)
        error = write_atomically(target, write)
    if error:
        raise OSError(f"could not write the compiled step: {error}")
    prune_steps(target.parent)


class CompiledStep:
    """A loaded package as ``model.decode_step``: (model, token [1, 1], start, cache) -> logits
    [1, 1, V], for the model it was loaded with and positions from COMPILED_FROM on."""

    def __init__(self, model: Transformer, package: Path) -> None:
        # the package's runner itself (what torch._inductor.aoti_load_package wraps): ~10 ms,
        # where importing torch._inductor for the wrapper took 1.4 s of the load
        self.runner = torch._C._aoti.AOTIModelPackageLoader(str(package), "model", False, 1, -1)
        self.weights = [t for _, t in step_weights(model)]

    def __call__(
        self, model: Transformer, tokens: torch.Tensor, start: int, cache: KVCache
    ) -> torch.Tensor:
        position = torch.empty(start, 0)
        inputs = [tokens, position, model.rope, *cache.k, *cache.v, *self.weights]
        return self.runner.boxed_run(inputs)[0]  # boxed: the runner empties the list


def cached_step(model: Transformer, package: Path) -> CompiledStep | None:
    """The step in ``package`` when there is one that loads. One that does not (cut short,
    not a package) is removed, so it is built again rather than trusted or failed on forever."""
    if not package.exists():
        return None
    try:
        step = CompiledStep(model, package)
    except RuntimeError:
        package.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):
        os.utime(package)  # used now: prune_steps keeps the packages used last
    return step


def prune_steps(folder: Path, keep: int = KEEP_STEPS) -> list[Path]:
    """Remove all but the ``keep`` packages used last (a new torch, a code change or another
    model leaves the old ones unread), and temp files of builds killed a day ago; returns
    what went."""
    now = time.time()
    packages, gone = [], []
    for path in folder.glob("*.pt2"):
        with contextlib.suppress(OSError):
            packages.append((path.stat().st_mtime, path))
    packages.sort(reverse=True)
    stale = [path for _, path in packages[keep:]]
    for path in folder.glob(".*.tmp*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > TEMP_MAX_AGE_S:
                stale.append(path)
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
            gone.append(path)
    return gone


def _step_here(model: Transformer, tokens: int) -> tuple[CompiledStep, float]:
    """The compiled step for ``tokens`` tokens, built here first when the cache has none;
    with the seconds the build took (0 when the package was there)."""
    package = step_package(model, tokens)
    step = cached_step(model, package)
    if step is not None:
        return step, 0.0
    t0 = time.perf_counter()
    build_package(model, package, tokens)
    return CompiledStep(model, package), time.perf_counter() - t0


def compile_decode_step(model: Transformer, verify: bool = False) -> float:
    """Hand ``model.decode_step`` its compiled step, and with ``verify`` ``model.verify_step``
    the one for speculative drafts (VERIFY_TOKENS tokens), building each package here first
    when there is none (blocking: the benchmarks, `llama-tui prepare`). Returns the seconds
    the builds took (0 when the packages were there)."""
    step, built = _step_here(model, 1)
    model.decode_step, model.decode_step_unbuilt = step, False
    if verify:
        model.verify_step, seconds = _step_here(model, VERIFY_TOKENS)
        built += seconds
    return built


def load_cached_step(model: Transformer, verify: bool = False) -> bool:
    """Hand ``model.decode_step`` (and with ``verify`` ``model.verify_step``) the packages
    already in the cache, here and now (5-10 ms each), building nothing: for a process that
    ends with its one reply (`llama-tui ask`), where a build would be stopped unfinished.
    Returns whether the one-token step was there."""
    step = cached_step(model, step_package(model))
    if step is not None:
        model.decode_step = step
        if verify:
            model.verify_step = cached_step(model, step_package(model, VERIFY_TOKENS))
    model.decode_step_unbuilt = step is None  # its replies say so (generate.step_label)
    return step is not None


@dataclass
class CompileStatus:
    """What the background build did, for a status line (filled in by the thread)."""

    ready: threading.Event
    seconds: float = 0.0  # build (or find) + load time, once ready (or failed)
    built: bool = False  # a build process ran (False: the package was in the cache)
    error: str | None = None  # why the step stayed eager (no C++ compiler, ...)


def _build_elsewhere(source: Mapping[str, Any], package: Path, tokens: int, key: str) -> None:
    """Run engine/step_build.py on ``source`` (load_model's profile keys) to write ``package``,
    the step for ``tokens`` tokens of the model whose step_key is ``key``; raises RuntimeError
    with its last line of output when it fails."""
    request = {
        "source": dict(source),
        "package": str(package),
        "key": key,
        "tokens": tokens,
        "threads": torch.get_num_threads(),
    }
    command = [sys.executable, "-m", "engine.step_build"]
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            _, err = child.communicate(json.dumps(request), timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise RuntimeError(f"the build ran past {BUILD_TIMEOUT_S} s and was stopped") from None
    if child.returncode != 0 or not package.exists():
        lines = [line for line in err.splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"build process exited {child.returncode}")


@dataclass
class _Wants:
    """A model's background builds: one is running, and whether it is to build the verify step
    after the one-token step (asked for at the start, or later by want_verify_step)."""

    running: bool = False
    verify: bool = False


_WANTS: weakref.WeakKeyDictionary[Transformer, _Wants] = weakref.WeakKeyDictionary()
_WANTS_LOCK = threading.Lock()


def want_verify_step(model: Transformer, source: Mapping[str, Any]) -> None:
    """Give ``model`` its verify step in the background: a profile with ``speculative`` on now
    uses a model loaded for one with it off (a live switch). A build already running for the
    model goes on to it once the one-token step is in; otherwise one starts now."""
    with _WANTS_LOCK:
        wants = _WANTS.setdefault(model, _Wants())
        if model.verify_step is not None or wants.verify:
            return
        wants.verify = True
        if wants.running:
            return
    compile_in_background(model, source, verify=True)


def compile_in_background(
    model: Transformer, source: Mapping[str, Any], verify: bool = False
) -> CompileStatus:
    """Give ``model`` its compiled step without stopping the chat: a package in the cache is
    loaded in a daemon thread; otherwise a child process loads the same model (``source``:
    the profile keys load_profile_model reads) and builds it first. The model decodes
    eagerly meanwhile. With ``verify`` (a profile with ``speculative`` on), the verify step
    follows the same way once the one-token step is in use; ``status`` is about the latter."""
    status = CompileStatus(threading.Event())
    with _WANTS_LOCK:
        wants = _WANTS.setdefault(model, _Wants())
        wants.running, wants.verify = True, wants.verify or verify

    def obtain(tokens: int) -> CompiledStep:
        package = step_package(model, tokens)
        step = cached_step(model, package)
        if step is None:
            status.built = status.built or tokens == 1
            _build_elsewhere(source, package, tokens, step_key(model))
            step = CompiledStep(model, package)
        return step

    def build() -> None:
        t0 = time.perf_counter()
        try:
            model.decode_step = obtain(1)
            status.seconds = time.perf_counter() - t0
            status.ready.set()
            with _WANTS_LOCK:  # asked for now, or by a switch while the step above was built
                verify_too = wants.verify
                wants.running = verify_too
            if verify_too:
                model.verify_step = obtain(VERIFY_TOKENS)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the eager step in place
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if model.decode_step is None:
                status.error = model.decode_step_error = error
            else:  # the one-token step is in use; drafts stay verified eagerly
                log.warning("the compiled verify step was not built: %s", error)
        finally:
            with _WANTS_LOCK:
                wants.running = False
            background.done()
        if not status.ready.is_set():
            status.seconds = time.perf_counter() - t0
            status.ready.set()

    background.start(threading.Thread(target=build, name="llama-tui-compile", daemon=True))
    return status
