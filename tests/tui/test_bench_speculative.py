"""`bench --speculative` on the tiny model: both modes run, the replies are compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tui.bench.speculative import MODES, TASKS
from tui.cli.main import main


def test_bench_speculative_reports_both_modes_per_task(
    tiny_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--model", str(tiny_gguf), "--dtype", "float32", "--device", "cpu"]
    assert main(["bench", "--speculative", *flags, "--tokens", "12", "--runs", "2", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["decode_step"] == "eager"  # the tests keep compile off
    assert set(record["tasks"]) == set(TASKS)
    for task in record["tasks"].values():
        assert task["identical"] is True  # the same greedy tokens either way
        assert 0.0 <= task["acceptance"] <= 1.0
        for mode in MODES:
            assert task[mode]["total"] == 2 and task[mode]["decode_tok_s"] > 0
    assert main(["bench", "--speculative", *flags, "--tokens", "6", "--runs", "1"]) == 0
    text = capsys.readouterr().out
    assert "prompt-lookup (tok/s)" in text and "rewrite (input-grounded)" in text


def test_bench_speculative_samples_with_the_profiles_chain_from_one_seed(
    tiny_gguf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--model", str(tiny_gguf), "--dtype", "float32", "--device", "cpu", "--json"]
    bench = ["bench", "--speculative", "--sampling", "default", "--tokens", "16", "--runs", "1"]
    assert main([*bench, *flags]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["sampling"] == "default"
    for task in record["tasks"].values():
        assert task["acceptance"] > 0  # drafts were made and kept, sampled
        assert task["identical"] is True  # one seed: drafts change the speed, not the tokens
