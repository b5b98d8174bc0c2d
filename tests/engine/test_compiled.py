"""engine.compiled: the inductor-compiled decode step gives the eager step's greedy tokens."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from engine.backend import GenerationRequest
from engine.compiled import (
    ENV_COMPILE,
    KEEP_STEPS,
    compile_decode_step,
    compile_in_background,
    compile_supported,
    compile_wanted,
    prune_steps,
    step_key,
    step_package,
)
from engine.config import Profile, SamplingSettings, load_config
from engine.errors import ConfigError
from engine.events import Done, TokenEvent
from engine.generate import (
    COMPILED_FROM,
    decode_one_token,
    generate,
    prefill,
    token_logits,
    uses_compiled_verify,
    verify,
)
from engine.kv_cache import KVCache
from engine.loaders import LoadedModel, load_model, load_profile_model
from engine.local import LocalBackend
from engine.metrics import STEP_NOT_BUILT
from engine.model import attention_sums, one_token_attention
from engine.placement import Placement
from engine.quantized import int4_cpu_supported
from engine.user_cache import ENV_CACHE_DIR
from tests.gguf_writer import write_tiny_gguf

CPU = torch.device("cpu")
PACKED = Placement(CPU, torch.bfloat16, native_4bit=True)
needs_compiler = pytest.mark.skipif(
    not int4_cpu_supported() or shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="needs torch's int4 CPU kernels and a C++ compiler for inductor",
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Inductor's on-disk cache for this module, not the user's."""
    path = tmp_path_factory.mktemp("llama-tui-cache")
    old = os.environ.get(ENV_CACHE_DIR)
    os.environ[ENV_CACHE_DIR] = str(path)
    yield path
    if old is None:
        del os.environ[ENV_CACHE_DIR]
    else:
        os.environ[ENV_CACHE_DIR] = old


@pytest.fixture(scope="module")
def q4_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("q4") / "tiny-q4.gguf"
    return write_tiny_gguf(path, quantize=Q.Q4_1, quantize_tables=Q.Q8_0)


@pytest.fixture(scope="module")
def compiled(q4_path: Path, cache_dir: Path) -> LoadedModel:
    m = load_model(q4_path, placement=PACKED, context_length=64)
    compile_decode_step(m.model)
    assert m.model.decode_step is not None
    return m


def greedy(m: LoadedModel, n: int, switch_at: int | None = None) -> tuple[list[int], torch.Tensor]:
    """n greedy tokens; the compiled step from token ``switch_at`` on (None: eager only)."""
    step, a = m.model.decode_step, m.args
    cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, m.context_length)
    logits = [prefill(m.model, cache, list(range(100, 110)), 0)]
    tokens = [int(logits[-1].argmax())]
    try:
        for i in range(1, n):
            m.model.decode_step = step if switch_at is not None and i >= switch_at else None
            logits.append(decode_one_token(m.model, cache, tokens[-1]))
            tokens.append(int(logits[-1].argmax()))
    finally:
        m.model.decode_step = step
    return tokens, torch.stack(logits)


@pytest.mark.slow
@needs_compiler
def test_switching_to_the_compiled_step_mid_reply_keeps_the_greedy_tokens(
    compiled: LoadedModel,
) -> None:
    eager, eager_logits = greedy(compiled, 40)
    switched, switched_logits = greedy(compiled, 40, switch_at=12)
    assert switched == eager
    # not bit for bit (inductor fuses the norms and rotations), but close
    torch.testing.assert_close(switched_logits, eager_logits, rtol=1e-3, atol=1e-3)
    assert not torch.equal(switched_logits[12:], eager_logits[12:])  # it did run compiled


@pytest.mark.slow
@needs_compiler
def test_the_compiled_step_covers_every_decode_position(compiled: LoadedModel) -> None:
    # it checks no guards: one graph must be right at any position and cache length
    model, a = compiled.model, compiled.args
    assert model.decode_step is not None
    cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, compiled.context_length)
    prefill(model, cache, [7, 8], 0)
    with torch.inference_mode():
        for start in range(COMPILED_FROM, compiled.context_length - 1):
            token = torch.tensor([[start]])
            step = model.decode_step(model, token, start, cache)
            eager = token_logits(model, token, start, cache)
            torch.testing.assert_close(step, eager, rtol=1e-3, atol=1e-3)
            cache.append([start])


@pytest.mark.slow
@needs_compiler
def test_each_model_gets_a_graph_of_its_own(
    compiled: LoadedModel, tmp_path: Path, cache_dir: Path
) -> None:
    # no guards tell models apart: a second model of other sizes must not run the first's graph
    path = write_tiny_gguf(
        tmp_path / "other.gguf", dim=96, n_layers=3, ffn_dim=192, seed=3, quantize=Q.Q4_1
    )
    other = load_model(path, placement=PACKED, context_length=64)
    compile_decode_step(other.model)
    for m in (other, compiled):  # the first model's step still runs its own graph
        eager, eager_logits = greedy(m, 16)
        switched, switched_logits = greedy(m, 16, switch_at=4)
        assert switched == eager
        torch.testing.assert_close(switched_logits, eager_logits, rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def verifying(compiled: LoadedModel) -> LoadedModel:
    """``compiled`` with its verify step for drafts too (a profile with ``speculative`` on)."""
    compile_decode_step(compiled.model, verify=True)
    assert compiled.model.verify_step is not None
    return compiled


@pytest.mark.slow
@needs_compiler
def test_the_verify_steps_rows_are_the_one_token_steps_bit_for_bit(verifying: LoadedModel) -> None:
    # so a draft the model accepts leaves the very logits and cache entries plain decoding
    # would have: the tokens after it cannot drift either
    model, a = verifying.model, verifying.args
    prompt = [3, 9, 4, 1, 5, 9, 2, 6]
    for draft in ([11], [11, 12], [11, 12, 13]):  # a draft shorter than 3 is padded
        fed = [7, *draft]
        one = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 32)
        prefill(model, one, prompt, 0)
        steps = [decode_one_token(model, one, t) for t in fed]
        batched = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 32)
        prefill(model, batched, prompt, 0)
        assert uses_compiled_verify(model, batched, len(fed))
        rows = verify(model, batched, fed)
        assert batched.tokens == one.tokens
        assert all(torch.equal(r, s) for r, s in zip(rows, steps, strict=True)), draft
        # and the next step reads what the verify step wrote into the cache
        assert torch.equal(decode_one_token(model, batched, 5), decode_one_token(model, one, 5))


@pytest.mark.slow
@needs_compiler
def test_a_draft_with_no_room_for_the_padding_is_verified_eagerly(verifying: LoadedModel) -> None:
    model, a = verifying.model, verifying.args
    cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 12)
    prefill(model, cache, [3, 9, 4, 1, 5, 9, 2, 6, 5], 0)  # 9 cached: 3 slots left, 4 needed
    assert not uses_compiled_verify(model, cache, 2)
    rows = verify(model, cache, [7, 11])
    assert len(rows) == 2 and cache.length == 11


def drafted_reply(m: LoadedModel, mode: str) -> Done:
    """48 greedy tokens after a prompt that repeats itself, so drafts come at once."""
    a = m.args
    cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, m.context_length)
    settings = SamplingSettings(temperature=0.0, repeat_penalty=1.0)
    ids = [3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 3, 4, 5]
    events = generate(
        m.model, m.tokenizer, cache, ids, settings, 48, stop_ids=frozenset(), speculative=mode
    )
    done = list(events)[-1]
    assert isinstance(done, Done)
    return done


@pytest.mark.slow
@needs_compiler
def test_drafts_on_the_compiled_steps_give_plain_decodings_tokens(verifying: LoadedModel) -> None:
    plain = drafted_reply(verifying, "off")
    drafted = drafted_reply(verifying, "prompt-lookup")
    assert drafted.token_ids == plain.token_ids
    assert drafted.metrics.accepted_tokens > 0
    assert drafted.metrics.decode_step == "compiled"
    step = verifying.model.verify_step
    verifying.model.verify_step = None  # still building: no eager forwards among compiled ones
    try:
        waiting = drafted_reply(verifying, "prompt-lookup")
    finally:
        verifying.model.verify_step = step
    assert waiting.token_ids == plain.token_ids and waiting.metrics.draft_tokens == 0
    assert waiting.metrics.decode_step == "compiled" and waiting.metrics.drafts_waited > 0
    assert drafted.metrics.drafts_waited == plain.metrics.drafts_waited == 0


def reply_step(m: LoadedModel, switch_after: int | None = None) -> str:
    """A 12-token greedy reply's GenerationMetrics.decode_step; with ``switch_after``, eager
    until that many tokens, then compiled (as the background build hands it over)."""
    step, a = m.model.decode_step, m.args
    cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, m.context_length)
    greedy_settings = SamplingSettings(temperature=0.0, repeat_penalty=1.0)
    m.model.decode_step = None if switch_after is not None else step
    label, tokens = "?", 0
    try:
        events = generate(
            m.model, m.tokenizer, cache, [7, 8, 9], greedy_settings, 12, stop_ids=frozenset()
        )
        for event in events:
            if isinstance(event, TokenEvent):
                tokens += 1
                if tokens == switch_after:
                    m.model.decode_step = step
            elif isinstance(event, Done):
                label = event.metrics.decode_step
    finally:
        m.model.decode_step = step
    return label


@pytest.mark.slow
@needs_compiler
def test_a_reply_says_which_step_decoded_it(compiled: LoadedModel) -> None:
    assert reply_step(compiled) == "compiled"
    assert reply_step(compiled, switch_after=5) == "eager, then compiled"
    step = compiled.model.decode_step
    compiled.model.decode_step = None
    try:
        assert reply_step(compiled) == ""  # eager, nothing building: no compiled step in play
    finally:
        compiled.model.decode_step = step


def test_one_token_attention_compiled_form_is_sdpa() -> None:
    # the sums inductor fuses (attention_sums) against SDPA, on a cache view as decode has it
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 3, 64, generator=g)
    cache = torch.randn(2, 1, 3, 40, 64, generator=g)
    k, v = cache[0][:, :, :29], cache[1][:, :, :29]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention_sums(q, k, v), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(one_token_attention(q, k, v), expected)  # eagerly: SDPA itself


def q4_profile(path: Path) -> Profile:
    return Profile(name="q4", model=str(path), dtype="bfloat16", device="cpu")


def cli(
    args: list[str],
    q4: Path,
    cache: Path,
    compile_on: str = "1",
    stdin: str | int = "",
    stderr: int = subprocess.PIPE,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The console entry point (tui.cli.main:run) in a real process, on the q4 model with
    ``cache`` as its cache folder and compile as ``compile_on`` says; ``stdin`` is its input
    through a pipe, or a file descriptor to read (a pseudo-terminal's)."""
    env = {**os.environ, ENV_COMPILE: compile_on, ENV_CACHE_DIR: str(cache), **(env_extra or {})}
    flags = ["--model", str(q4), "--dtype", "bfloat16", "--device", "cpu"]
    feed: dict[str, Any] = {"input": stdin} if isinstance(stdin, str) else {"stdin": stdin}
    return subprocess.run(
        [sys.executable, "-c", "from tui.cli.main import run; run()", *args, *flags],
        **feed,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
        cwd=cache.parent,
        timeout=600,
    )


@pytest.mark.slow
@needs_compiler
def test_a_build_process_writes_the_package_and_the_next_start_loads_it(
    q4_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_COMPILE, "1")  # the test session turns it off (conftest)
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))  # cold: no package yet
    first = load_profile_model(q4_profile(q4_path))
    assert first.compiled is not None and first.model.decode_step is None  # eager meanwhile
    assert reply_step(first) == "eager (compiled step building)"  # a build takes 10 s or more
    assert first.compiled.ready.wait(600) and first.compiled.error is None
    assert first.compiled.built and first.model.decode_step is not None
    assert [p.name for p in (tmp_path / "steps").iterdir()] == [step_package(first.model).name]
    again = load_profile_model(q4_profile(q4_path))  # a second start finds it
    assert again.compiled is not None and again.compiled.ready.wait(600)
    assert again.compiled.error is None and not again.compiled.built
    for m in (first, again):
        eager, eager_logits = greedy(m, 16)
        switched, switched_logits = greedy(m, 16, switch_at=4)
        assert switched == eager
        torch.testing.assert_close(switched_logits, eager_logits, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
@needs_compiler
def test_a_failed_build_leaves_the_eager_step_and_says_why(
    q4_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))  # cold: no package yet
    m = load_model(q4_path, placement=PACKED, context_length=64)
    other = write_tiny_gguf(tmp_path / "other.gguf", dim=96, ffn_dim=192, quantize=Q.Q4_1)
    source = {"model": str(other), "dtype": "bfloat16", "device": "cpu"}
    status = compile_in_background(m.model, source)  # the build process loads another model
    assert status.ready.wait(300)
    assert status.error is not None and "other than the chat's" in status.error
    assert m.model.decode_step is None and not step_package(m.model).exists()
    assert reply_step(m) == f"eager (compiled step failed: {status.error})"  # the pane's row


@pytest.mark.slow
@needs_compiler
def test_a_package_that_does_not_load_is_built_again(
    q4_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))
    m = load_model(q4_path, placement=PACKED, context_length=64)
    package = step_package(m.model)
    package.parent.mkdir(parents=True)
    package.write_bytes(b"PK\x03\x04 cut short")  # a zip's first bytes, then nothing
    assert compile_decode_step(m.model) > 0  # rebuilt, not trusted
    assert m.model.decode_step is not None
    eager, _ = greedy(m, 12)
    assert greedy(m, 12, switch_at=3)[0] == eager
    assert compile_decode_step(m.model) == 0.0  # the rebuilt one loads


def test_the_steps_folder_keeps_the_packages_used_last(tmp_path: Path) -> None:
    for i in range(KEEP_STEPS + 3):
        path = tmp_path / f"{i:02d}.pt2"
        path.write_bytes(b"x")
        os.utime(path, (1000.0 + i, 1000.0 + i))  # 00 used first, 10 last
    killed = tmp_path / ".00.pt2.4242.tmp.pt2"  # a build killed long ago
    killed.write_bytes(b"x")
    os.utime(killed, (1000.0, 1000.0))
    running = tmp_path / ".01.pt2.4243.tmp"  # a build writing now
    running.write_bytes(b"x")
    gone = prune_steps(tmp_path)
    assert sorted(p.name for p in gone) == [".00.pt2.4242.tmp.pt2", "00.pt2", "01.pt2", "02.pt2"]
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [".01.pt2.4243.tmp", *[f"{i:02d}.pt2" for i in range(3, KEEP_STEPS + 3)]]


def test_the_package_key_follows_shapes_and_threads_not_values(q4_path: Path) -> None:
    m = load_model(q4_path, placement=PACKED, context_length=64)
    key = step_key(m.model)
    with torch.no_grad():
        m.model.norm.weight.add_(1.0)  # other values, same shapes: the same package
    assert step_key(m.model) == key
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # inductor plans its loops for the thread count
    try:
        assert step_key(m.model) != key
    finally:
        torch.set_num_threads(threads)
    shorter = load_model(q4_path, placement=PACKED, context_length=32)
    assert step_key(shorter.model) == key  # the rope table's length is an input's size


def test_compile_is_a_profile_key_and_an_environment_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: LoadedModel
) -> None:
    monkeypatch.delenv(ENV_COMPILE, raising=False)
    assert compile_wanted(True) and not compile_wanted(False)
    for off in ("0", "false", "OFF"):
        monkeypatch.setenv(ENV_COMPILE, off)
        assert not compile_wanted(True)
    path = tmp_path / "llama-tui.toml"
    path.write_text("[defaults]\ncompile = false\n", encoding="utf-8")
    assert load_config(path).defaults.compile is False
    path.write_text('[defaults]\ncompile = "yes"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="compile"):
        load_config(path)
    assert not compile_supported(tiny_model.model)  # float32, no 4-bit blocks: stays eager


@pytest.mark.slow
@needs_compiler
def test_a_profile_starts_the_build_unless_compile_is_off(
    q4_path: Path, cache_dir: Path, compiled: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_COMPILE, "1")  # the test session turns it off (conftest)
    profile = q4_profile(q4_path)
    loaded = load_profile_model(profile)
    assert loaded.compiled is not None  # started; the model decodes eagerly meanwhile
    assert loaded.compiled.ready.wait(600) and loaded.model.decode_step is not None
    off = load_profile_model(replace(profile, compile=False))
    assert off.compiled is None and off.model.decode_step is None


@pytest.mark.slow
@needs_compiler
def test_a_live_switch_to_drafts_builds_the_verify_step_after_the_running_build(
    q4_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_COMPILE, "1")
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path))  # cold: the one-token step builds first
    backend = LocalBackend()
    plain = q4_profile(q4_path)
    backend.load(plain, lambda done, total: None)
    backend.load(replace(plain, speculative="prompt-lookup"), lambda done, total: None)
    assert backend.loads == 1  # the same model, switched live
    assert backend.session is not None
    model = backend.session.loaded.model
    deadline = time.monotonic() + 600
    while model.verify_step is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert model.verify_step is not None and model.decode_step is not None
    steps = sorted(p.name for p in (tmp_path / "steps").glob("*.pt2"))
    key = step_key(model)
    assert steps == [f"{key}-verify4.pt2", f"{key}.pt2"]  # each built once
    request = GenerationRequest("complete", text="a b c d a b c d a b c d a b", max_new_tokens=16)
    done = list(backend.generate(request, threading.Event()))[-1]
    assert isinstance(done, Done) and done.metrics.decode_step == "compiled"


@pytest.mark.slow
@needs_compiler
def test_a_one_reply_load_takes_a_package_from_the_cache_and_builds_none(
    q4_path: Path,
    cache_dir: Path,
    compiled: LoadedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `llama-tui ask` (build_step=False): its process ends with the reply, before any build
    monkeypatch.setenv(ENV_COMPILE, "1")  # the test session turns it off (conftest)
    warm = load_profile_model(q4_profile(q4_path), build_step=False)
    assert warm.compiled is None and warm.model.decode_step is not None  # loaded at once
    assert reply_step(warm) == "compiled"
    os.environ[ENV_CACHE_DIR] = str(tmp_path)  # cold; the module fixture restores it
    try:
        cold = load_profile_model(q4_profile(q4_path), build_step=False)
    finally:
        os.environ[ENV_CACHE_DIR] = str(cache_dir)
    assert cold.compiled is None and cold.model.decode_step is None
    assert reply_step(cold) == STEP_NOT_BUILT  # eager, nothing building, and how to build
    assert not builders(str(tmp_path)) and not (tmp_path / "steps").exists()
    compile_decode_step(cold.model)  # what `llama-tui prepare` runs
    assert not cold.model.decode_step_unbuilt and reply_step(cold) == "compiled"


@pytest.mark.slow
@needs_compiler
def test_ask_decodes_on_the_cached_package_and_says_so(
    q4_path: Path, cache_dir: Path, compiled: LoadedModel, tmp_path: Path
) -> None:
    args = ["ask", "--json", "--max-new-tokens", "6", "--temperature", "0", "Hi"]
    (warm,), (cold,) = warm_and_cold(args, q4_path, cache_dir, tmp_path / "cold")
    assert warm["decode_step"] == "compiled"
    assert cold["decode_step"] == STEP_NOT_BUILT  # no build for one reply
    assert warm["token_ids"] == cold["token_ids"]
    assert not builders(str(tmp_path / "cold")) and not (tmp_path / "cold" / "steps").exists()


def warm_and_cold(
    args: list[str], q4: Path, warm: Path, cold: Path, stdin: str = ""
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The CLI's JSON lines (``args`` with --json) with ``warm`` as its cache folder (the step
    in it), then ``cold`` (none)."""
    replies = []
    for cache in (warm, cold):
        done = cli(args, q4, cache, stdin=stdin)
        assert done.returncode == 0, done.stderr
        replies.append([json.loads(line) for line in done.stdout.splitlines()])
    return replies[0], replies[1]


def drafts_profile(folder: Path) -> list[str]:
    """Command-line flags for a profile with drafts on, from a config file in ``folder``."""
    config = folder / "llama-tui.toml"
    config.write_text('[profiles.drafts]\nspeculative = "prompt-lookup"\n')
    return ["--config", str(config), "--profile", "drafts"]


def on_a_terminal(args: list[str], q4: Path, cache: Path, stdin: str = "") -> str:
    """What the CLI writes to stderr when stderr is a terminal (a pseudo-terminal here)."""
    leader, follower = pty.openpty()
    try:
        done = cli(args, q4, cache, stdin=stdin, stderr=follower)
        assert done.returncode == 0
    finally:
        os.close(follower)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the follower side is closed and read out
        while chunk := os.read(leader, 4096):
            shown += chunk
    os.close(leader)
    return shown.decode(errors="replace")


@pytest.mark.slow
@needs_compiler
def test_ask_on_a_terminal_says_how_to_build_the_step_when_there_is_none(
    q4_path: Path, cache_dir: Path, compiled: LoadedModel, tmp_path: Path
) -> None:
    ask = ["ask", "--max-new-tokens", "3", "Hi"]
    cold = on_a_terminal(ask, q4_path, tmp_path / "cold")
    assert "`llama-tui prepare` builds the compiled step once" in cold
    assert "llama-tui prepare" not in on_a_terminal(ask, q4_path, cache_dir)  # warm: it ran on it


@pytest.mark.slow
@needs_compiler
def test_a_chat_reading_a_pipe_builds_no_step_and_says_once_how_to(
    q4_path: Path, cache_dir: Path, compiled: LoadedModel, tmp_path: Path
) -> None:
    # like `ask`, its process ends with its input, before a build would: the cache's step or none
    chat = ["chat", "--plain", "--no-save", "--max-new-tokens", "4", "--temperature", "0"]
    lines = "hello\nagain\n"
    warm, cold = warm_and_cold([*chat, "--json"], q4_path, cache_dir, tmp_path / "cold", lines)
    assert [r["decode_step"] for r in warm] == ["compiled", "compiled"]
    assert [r["decode_step"] for r in cold] == [STEP_NOT_BUILT, STEP_NOT_BUILT]
    assert [r["token_ids"] for r in warm] == [r["token_ids"] for r in cold]
    shown = on_a_terminal(chat, q4_path, tmp_path / "cold", stdin="hello\nagain\n")
    assert shown.count("`llama-tui prepare` builds the compiled step once") == 1  # not a reply
    assert "llama-tui prepare" not in on_a_terminal(chat, q4_path, cache_dir, stdin="hello\n")
    assert not builders(str(tmp_path / "cold")) and not (tmp_path / "cold" / "steps").exists()


@pytest.mark.slow
@needs_compiler
def test_ask_on_a_terminal_says_how_to_build_the_verify_step_drafts_wait_for(
    q4_path: Path, cache_dir: Path, verifying: LoadedModel, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"  # the one-token step built, the verify step not
    (cache / "steps").mkdir(parents=True)
    for package in (cache_dir / "steps").glob("*.pt2"):
        if "-verify" not in package.name:
            shutil.copy(package, cache / "steps")
    ask = ["ask", "--max-new-tokens", "6", *drafts_profile(tmp_path), "Hi"]
    shown = on_a_terminal(ask, q4_path, cache)
    assert "made no speculative drafts: `llama-tui prepare` builds the compiled verify" in shown
    assert "speculative" not in on_a_terminal(ask, q4_path, cache_dir)  # both steps there


@pytest.mark.slow
@needs_compiler
def test_prepare_builds_the_step_once_and_ask_then_decodes_on_it(
    q4_path: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shown = on_a_terminal(["prepare"], q4_path, cache).replace("\r\n", "\n")
    lines = [line for line in shown.split("\n") if line]  # one a step, no warnings or traces
    assert len(lines) == 3, shown
    assert "weights cache: written" in lines[0] and "built in" in lines[2]
    # the build's line: the seconds so far, redrawn each second over itself
    ticks = [part for part in lines[1].split("\r") if part]
    assert all(re.fullmatch(r"llama-tui: compiled decode step: building.* \d+ s", t) for t in ticks)
    assert len(ticks) >= 2, lines[1]  # a build of even the tiny model takes seconds
    packages = sorted((cache / "steps").iterdir())
    assert [p.suffix for p in packages] == [".pt2"]
    again = cli(["prepare"], q4_path, cache)
    assert again.returncode == 0 and "weights cache: read" in again.stderr
    assert again.stderr.splitlines()[-1] == "llama-tui: compiled decode step: ready (already built)"
    assert sorted((cache / "steps").iterdir()) == packages  # nothing built twice
    reply = cli(
        ["ask", "--json", "--max-new-tokens", "4", "--temperature", "0", "Hi"], q4_path, cache
    )
    assert reply.returncode == 0 and json.loads(reply.stdout)["decode_step"] == "compiled"
    off = cli(["prepare"], q4_path, cache, compile_on="0")
    assert off.returncode == 0 and "compiled decode step: off" in off.stderr


@pytest.mark.slow
@needs_compiler
def test_prepare_builds_the_verify_step_for_a_profile_with_drafts_on(
    q4_path: Path, tmp_path: Path
) -> None:
    cache, drafts = tmp_path / "cache", drafts_profile(tmp_path)
    first = cli(["prepare", *drafts], q4_path, cache)
    assert first.returncode == 0, first.stderr
    assert "compiled decode step: built in" in first.stderr
    assert "compiled verify step (speculative drafts): built in" in first.stderr.splitlines()[-1]
    assert len(list((cache / "steps").glob("*-verify4.pt2"))) == 1
    again = cli(["prepare", *drafts], q4_path, cache)
    assert again.stderr.splitlines()[-1] == (
        "llama-tui: compiled verify step (speculative drafts): ready (already built)"
    )
    plain = cli(["prepare"], q4_path, cache)  # drafts off: no verify step is asked for
    assert "verify" not in plain.stderr
    for package in (cache / "steps").glob("*-verify4.pt2"):
        package.unlink()
    broken = cli(["prepare", *drafts], q4_path, cache, env_extra={"CXX": "/bin/false"})
    assert broken.returncode == 2  # one line, saying what replies do meanwhile
    assert broken.stderr.splitlines()[-1].startswith(
        "llama-tui: error: the compiled verify step (speculative drafts) could not be built ("
    )
    assert "replies decode on the compiled step without drafts: install a C++" in broken.stderr
    assert cli(["prepare", *drafts], q4_path, cache).returncode == 0  # built after all
    reply = cli(
        ["ask", "--json", "--max-new-tokens", "24", "--temperature", "0", *drafts, "a b a b a b"],
        q4_path,
        cache,
    )
    assert reply.returncode == 0, reply.stderr
    record = json.loads(reply.stdout)
    assert record["decode_step"] == "compiled"  # drafts verified on the compiled step too


@pytest.mark.slow
@needs_compiler
def test_the_command_line_exits_cleanly_while_the_build_still_runs(
    q4_path: Path, tmp_path: Path
) -> None:
    # the console entry point (tui.cli.main:run) in a real process: the reply ends long before
    # the build, whose daemon thread inside inductor's native code used to abort the exit (134)
    cold = tmp_path / "cold"
    args = ["chat", "--plain", "--no-save", "--max-new-tokens", "3"]
    leader, follower = pty.openpty()  # typed at a terminal (a chat reading a pipe builds none)
    try:
        os.write(leader, b"hello\n\x04")  # a line, then Ctrl-D
        done = cli(args, q4_path, cold, stdin=follower)
    finally:
        os.close(follower)
        os.close(leader)
    assert done.returncode == 0, done.stderr
    assert "terminate called" not in done.stderr and done.stdout  # the reply was printed
    # the build process it started (engine/step_build.py) notices and stops within seconds
    deadline = time.monotonic() + 30
    while builders(str(cold)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not builders(str(cold))


def builders(cache: str) -> list[psutil.Process]:
    """Running build processes (engine.step_build) whose cache folder is ``cache``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "engine.step_build" in (proc.info["cmdline"] or []):
                if proc.environ().get(ENV_CACHE_DIR) == cache:
                    found.append(proc)
        except psutil.Error:
            continue
    return found
