"""`bench --vs`: the noise rule and the maths on given numbers, then ours and llama.cpp for real
on the embedded model with tiny lengths (a few seconds)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from engine import (
    Done,
    KVCache,
    LoadedModel,
    SamplingSettings,
    Stamp,
    default_model_path,
    generate,
    load_config,
    profile_to_dict,
    resolve_profile,
)
from engine.dense_prefill import VERDICT_FILE
from engine.user_cache import cache_dir
from tui.bench.vs import Sample, compare, format_table, summarize, to_json
from tui.bench.workers import LLAMA_CPP, OURS, TRANSFORMERS, LlamaCpp, Ours, Spec, Transformers
from tui.cli.main import main

GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0, seed=0)


def test_noise_rule_drops_loud_samples_unless_all_are_loud() -> None:
    mixed = [Sample(10.0, 0.0), Sample(99.0, 0.5), Sample(12.0, 0.10), Sample(11.0, 0.02)]
    s = summarize(mixed, max_other_load=0.10)  # the limit itself is still quiet
    assert (s.median, s.low, s.high, s.kept, s.total, s.noisy) == (11.0, 10.0, 12.0, 3, 4, False)
    loud = summarize([Sample(10.0, 0.5), Sample(30.0, 0.6)], max_other_load=0.10)
    assert (loud.median, loud.low, loud.high, loud.kept, loud.noisy) == (20.0, 10.0, 30.0, 2, True)


def _record(engine: str, decode: list[float], start_s: float, loud: bool = False) -> dict[str, Any]:
    """A worker's record with these decode speeds; its first token start_s after its spawn."""
    cores = os.cpu_count() or 1
    others = cores * start_s * (0.5 if loud else 0.0)  # CPU seconds other processes used
    return {
        "engine": engine,
        "weights": "w",
        "runs": [
            {"decode_tok_s": d, "prefill_tok_s": 10 * d, "ttft_s": 1 / d, "other_load": 0.0}
            for d in decode
        ],
        "first_token": {"at": 100.0 + start_s, "busy_s": 50.0 + 2.0 + others, "cpu_s": 2.0},
        "peak_rss_bytes": 512 * 2**20,
        "tokens": [1, 2, 3],
    }


SPAWNED = Stamp(at=100.0, busy_s=50.0, cpu_s=0.0)


def test_processes_pool_into_medians_ranges_and_ratios() -> None:
    records = [
        (_record(OURS, [80.0, 90.0], 3.0), SPAWNED),
        (_record(LLAMA_CPP, [40.0, 50.0], 1.0), SPAWNED),
        (_record(OURS, [100.0], 4.0), SPAWNED),
        (_record(LLAMA_CPP, [45.0], 9.0, loud=True), SPAWNED),  # its start is dropped
    ]
    summaries = compare(records, max_other_load=0.10)
    assert list(summaries) == [OURS, LLAMA_CPP]
    ours, peer = summaries[OURS], summaries[LLAMA_CPP]
    assert (ours["decode_tok_s"].median, ours["decode_tok_s"].total) == (90.0, 3)
    assert ours["start_to_first_token_s"].median == pytest.approx(3.5)
    start = peer["start_to_first_token_s"]
    assert (start.median, start.kept, start.total) == (pytest.approx(1.0), 1, 2)
    record = to_json(summaries, {OURS: "bfloat16+int4", LLAMA_CPP: "Q4_1"}, {"tokens": 3})
    assert record["tokens"] == 3
    engine = record["engines"][OURS]
    assert engine["weights"] == "bfloat16+int4" and engine["decode_tok_s"] == 90.0
    assert engine["ranges"]["decode_tok_s"] == [80.0, 100.0]
    assert engine["samples"]["start_to_first_token_s"] == {"kept": 2, "total": 2}
    assert engine["peak_rss_mib"] == 512.0 and engine["noisy"] == []
    assert set(engine) >= {"prefill_tok_s", "ttft_s", "start_to_first_token_s"}
    ratios = record["ratios"][LLAMA_CPP]
    assert ratios["decode_tok_s"] == pytest.approx(90 / 45)
    assert ratios["start_to_first_token_s"] == pytest.approx(3.5)
    assert ratios["peak_rss_mib"] == 1.0
    json.dumps(record)  # plain JSON
    table = format_table(summaries, {OURS: "a", LLAMA_CPP: "b"}).splitlines()
    assert table[0].split(" | ")[-1].strip() == f"ours/{LLAMA_CPP}"
    assert "90.0 (80.0-100.0)" in table[2] and table[2].endswith("2.00x")
    loud = [(_record(OURS, [80.0], 3.0), SPAWNED), (_record(LLAMA_CPP, [40.0], 9.0, True), SPAWNED)]
    start_row = format_table(compare(loud, 0.10), {OURS: "a", LLAMA_CPP: "b"}).splitlines()[5]
    assert start_row.endswith("0.33x (noisy)")  # a ratio with a noisy side is marked too


def test_generate_stops_on_the_stop_ids_given(tiny_model: LoadedModel) -> None:
    m, ids = tiny_model, [1, 2, 3, 4]

    def reply(stop_ids: frozenset[int] | None) -> Done:
        a = m.args
        cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 32, dtype=m.dtype, device=m.device)
        events = list(generate(m.model, m.tokenizer, cache, ids, GREEDY, 6, stop_ids=stop_ids))
        assert isinstance(events[-1], Done)
        return events[-1]

    free = reply(frozenset())  # none: the bench's exact lengths
    assert free.stop_reason == "length" and len(free.token_ids) == 6
    stopped = reply(frozenset({free.token_ids[0]}))  # in place of the tokenizer's
    assert stopped.stop_reason == "stop" and stopped.token_ids == []


def test_ours_worker_generates_exactly_n_tokens_with_either_sampler(tiny_gguf: Path) -> None:
    profile = profile_to_dict(resolve_profile(load_config(None), None, {"device": "cpu"}))
    spec = Spec(OURS, str(tiny_gguf), 1, 5, 1, prompt_tokens=12, profile=profile)
    ours = Ours(spec)
    assert len(ours.ids) == 12
    assert ours.prepare() == 0.0 and ours.step == "eager"  # the tests keep compile off
    run = ours.run(5)
    assert len(run.tokens) == len(run.times) == 5 and run.prefill_s > 0
    sampled = Ours(replace(spec, sampling=asdict(replace(GREEDY, temperature=1.0))))
    again = sampled.run(5)
    assert len(again.tokens) == 5 and again.tokens == sampled.run(5).tokens  # seeded


def test_ours_worker_takes_a_profile_of_the_shipped_config(tiny_gguf: Path) -> None:
    # the shipped file's [defaults] next to the remote keys' defaults: a worker given the whole
    # flat profile once refused base_url = "" as a remote key set on a local profile
    shipped = load_config(Path(__file__).parents[2] / "llama-tui.toml")
    profile = profile_to_dict(resolve_profile(shipped, None, {"device": "cpu"}))
    ours = Ours(Spec(OURS, str(tiny_gguf), 1, 3, 1, prompt_tokens=6, profile=profile))
    assert len(ours.run(3).tokens) == 3


def test_transformers_worker_generates_exactly_n_tokens(tiny_gguf: Path) -> None:
    pytest.importorskip("transformers")
    spec = Spec(TRANSFORMERS, str(tiny_gguf), 1, 4, 1, ids=[1, 2, 3, 4, 5])
    sampling = asdict(replace(SamplingSettings(), seed=1))
    for engine in (Transformers(spec), Transformers(replace(spec, sampling=sampling))):
        run = engine.run(4)
        assert len(run.tokens) == len(run.times) == 4 and run.prefill_s > 0
        assert engine.run(4).tokens == run.tokens  # greedy, or the same seed each run


def needs_llama_cpp() -> None:
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (bash scripts/install.sh --test)"
    )


def test_llama_cpp_worker_samples_with_our_default_chain() -> None:
    needs_llama_cpp()
    sampling = asdict(replace(SamplingSettings(), seed=3))
    spec = Spec(LLAMA_CPP, str(default_model_path()), 1, 4, 1, ids=[1, 2, 3, 4, 5, 6])
    for engine in (LlamaCpp(spec), LlamaCpp(replace(spec, sampling=sampling))):
        run = engine.run(4)
        assert len(run.tokens) == 4 and run.prefill_s > 0
        assert engine.run(4).tokens == run.tokens  # greedy, or the same seed each run


def test_vs_llama_cpp_for_real(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_llama_cpp()
    monkeypatch.chdir(tmp_path)  # no llama-tui.toml: the built-in profile
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    flags = ["--tokens", "3", "--prompt-tokens", "8", "--runs", "1", "--processes", "1"]
    assert main(["bench", "--vs", "llama.cpp", *flags, "--threads", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["order"] == [OURS, LLAMA_CPP] and record["prompt_tokens"] == 8
    metrics = {"decode_tok_s", "prefill_tok_s", "ttft_s", "start_to_first_token_s"}
    for name in (OURS, LLAMA_CPP):
        engine = record["engines"][name]
        assert all(engine[k] > 0 for k in metrics | {"peak_rss_mib"}), engine
        assert engine["ranges"]["decode_tok_s"][0] <= engine["decode_tok_s"]
    assert set(record["ratios"][LLAMA_CPP]) == metrics | {"peak_rss_mib"}
    assert record["parity"][LLAMA_CPP].startswith(("identical", "DIFFER"))
    assert record["decode_step"] == "eager" and record["compile_s"] == [0.0]
    # the dense prefill's crossing, as the worker (one thread) measured and remembered it
    remembered = json.loads((cache_dir() / VERDICT_FILE).read_text())["records"]
    ours_rows = [r["from_rows"] for r in remembered if r["key"]["threads"] == 1]
    assert ours_rows and record["dense_prefill_from"] == ours_rows[-1]
