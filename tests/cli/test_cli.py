"""The headless CLI as a user runs it: real subprocesses, JSON output, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType

from engine.timings import PHASES
from tests.gguf_writer import write_tiny_gguf

ROOT = Path(__file__).resolve().parents[2]
FIELDS = {
    "text",
    "token_ids",
    "prompt_tokens",
    "cached_tokens",
    "ttft_s",
    "prefill_tok_s",
    "decode_tok_s",
    "stop_reason",
}


def run(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(cwd / "xdg")}
    return subprocess.run(
        [sys.executable, "-m", "tui.cli.main", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_ask_json_on_tiny_model(tiny_gguf: Path, tmp_path: Path) -> None:
    proc = run(
        [
            "ask",
            "--model",
            str(tiny_gguf),
            "--temperature",
            "0",
            "--max-new-tokens",
            "5",
            "--json",
            "hello",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert FIELDS <= set(record)
    assert record["cached_tokens"] == 0 and record["prompt_tokens"] > 0
    assert len(record["token_ids"]) <= 5
    timings = record["timings"]  # where the reply's time went
    assert set(PHASES) <= set(timings) and timings["wall_s"] >= timings["prefill_s"] > 0
    assert record["energy_source"] in ("estimate", "rapl")  # a CPU model: no NVML
    assert record["energy_j"] >= 0 and "cost" not in record  # no price set


def test_ask_into_a_closed_pipe_stops_quietly(tiny_gguf: Path, tmp_path: Path) -> None:
    """`llama-tui ask ... | head -1` once head has gone: SIGPIPE's status, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: the first write fails
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    args = ["ask", "--model", str(tiny_gguf), "--temperature", "0", "--max-new-tokens", "4", "hi"]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tui.cli.main", *args],
            cwd=tmp_path,
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


def test_exit_handlers_run_before_the_quick_exit(tmp_path: Path) -> None:
    """The entry point leaves with os._exit (no interpreter teardown), after the exit handlers
    (logging's flush, temporary folders' removal) and with main's exit status."""
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('exit handler ran', file=sys.stderr))\n"
        "sys.argv = ['llama-tui', 'ask', '--model', 'nope.gguf', 'hi']\n"
        "from tui.cli.main import run\n"
        "run()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and "nope.gguf" in lines[0], proc.stderr
    assert lines[1] == "exit handler ran"


def test_ask_json_costs_at_the_configured_price(tiny_gguf: Path, tmp_path: Path) -> None:
    config = tmp_path / "llama-tui.toml"
    config.write_text(
        f'[defaults]\nmodel = "{tiny_gguf.as_posix()}"\ncost_per_1k_input_tokens = 2.0\n'
        "cost_per_1k_output_tokens = 10.0\ncpu_watts_per_core = 5.0\n"
    )
    flags = ["--config", str(config), "--temperature", "0", "--max-new-tokens", "5"]
    proc = run(["ask", *flags, "--json", "hello"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    expected = (r["prompt_tokens"] * 2.0 + r["generated_tokens"] * 10.0) / 1000
    assert r["cost"] == pytest.approx(expected)


def test_raw_completion_skips_the_template(tiny_gguf: Path, tmp_path: Path) -> None:
    proc = run(
        [
            "ask",
            "--model",
            str(tiny_gguf),
            "--raw",
            "--temperature",
            "0",
            "--max-new-tokens",
            "3",
            "--json",
            "Once upon a time",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt_tokens"] == 4  # "Once", " upon", " a", " time"


def test_plain_chat_reuses_the_cache_from_turn_two(tiny_gguf: Path, tmp_path: Path) -> None:
    proc = run(
        [
            "chat",
            "--plain",
            "--json",
            "--model",
            str(tiny_gguf),
            "--temperature",
            "0",
            "--max-new-tokens",
            "4",
        ],
        tmp_path,
        stdin="hi\nhow are you?\nbye\n",
    )
    assert proc.returncode == 0, proc.stderr
    turns = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(turns) == 3
    assert turns[0]["cached_tokens"] == 0
    assert all(t["cached_tokens"] > 0 for t in turns[1:])
    assert all(FIELDS <= set(t) for t in turns)


@pytest.mark.slow
def test_plain_chat_streams_text_on_the_default_model(tmp_path: Path) -> None:
    proc = run(
        ["chat", "--plain", "--temperature", "0", "--max-new-tokens", "16"],
        tmp_path,
        stdin="What is the capital of France?\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


def test_missing_model(tmp_path: Path) -> None:
    assert_one_line_error(
        run(["ask", "--model", "nope.gguf", "hi"], tmp_path), "nope.gguf", "not found"
    )


def test_file_that_is_not_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_text("this is not a model")
    assert_one_line_error(
        run(["ask", "--model", str(bogus), "hi"], tmp_path), "model.gguf", "not a GGUF file"
    )


@pytest.mark.parametrize("keep", [0.0005, 0.9])
def test_truncated_gguf(tiny_gguf: Path, tmp_path: Path, keep: float) -> None:
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: max(64, int(len(data) * keep))])
    assert_one_line_error(
        run(["ask", "--model", str(cut), "hi"], tmp_path), "cut.gguf", "truncated"
    )


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "falcon.gguf", arch="falcon")
    assert_one_line_error(
        run(["ask", "--model", str(path), "hi"], tmp_path),
        "falcon.gguf",
        "unsupported architecture",
        "falcon",
    )


def test_unsupported_quantization(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "q81.gguf", raw_type=GGMLQuantizationType.Q8_1)
    assert_one_line_error(
        run(["ask", "--model", str(path), "hi"], tmp_path), "q81.gguf", "Q8_1", "cannot load"
    )


def test_toml_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "llama-tui.toml").write_text("[defaults]\ntemperature = = 1\n")
    assert_one_line_error(run(["ask", "hi"], tmp_path), "llama-tui.toml:2:", "invalid TOML")


def test_unknown_key(tmp_path: Path) -> None:
    (tmp_path / "my.toml").write_text("[defaults]\ntemprature = 0.5\n")
    assert_one_line_error(
        run(["ask", "--config", "my.toml", "hi"], tmp_path), "my.toml", "temprature", "temperature"
    )


def test_negative_temperature_in_file_and_flag(tmp_path: Path) -> None:
    (tmp_path / "llama-tui.toml").write_text("[profiles.hot]\ntemperature = -1.0\n")
    assert_one_line_error(
        run(["ask", "--profile", "hot", "hi"], tmp_path), "profiles.hot.temperature", "-1"
    )
    (tmp_path / "llama-tui.toml").unlink()
    assert_one_line_error(
        run(["ask", "--temperature", "-0.5", "hi"], tmp_path), "--temperature", "-0.5"
    )


def test_prompt_longer_than_context(tiny_gguf: Path, tmp_path: Path) -> None:
    """A message longer than the whole prompt budget is cut, with a notice, not an error."""
    flags = ["--model", str(tiny_gguf), "--context-length", "96", "--max-new-tokens", "4"]
    flags += ["--temperature", "0"]
    prompt = "word " * 100
    proc = run(["ask", *flags, "--json", prompt], tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["prompt_tokens"] == 92  # the budget: 96 minus 4 for the reply
    assert record["generated_tokens"] >= 1 and record["text"]
    assert "tokens from the middle of your message were cut" in record["notice"]
    assert "(92 of 92 tokens)" in record["notice"]

    text = run(["ask", *flags, prompt], tmp_path)
    assert text.returncode == 0, text.stderr
    [note] = [line for line in text.stderr.splitlines() if line.strip()]
    assert note.startswith("llama-tui: note: ") and "were cut" in note

    raw = run(["ask", *flags, "--raw", "--json", prompt], tmp_path)
    assert raw.returncode == 0, raw.stderr
    record = json.loads(raw.stdout)
    assert record["prompt_tokens"] == 92
    assert record["notice"] == (  # "word", 99 x " word", " ": the first 9 go
        "the prompt is 101 tokens, over the 92-token prompt budget: its first 9 tokens were cut"
    )


def test_system_prompt_longer_than_context(tiny_gguf: Path, tmp_path: Path) -> None:
    flags = ["--model", str(tiny_gguf), "--context-length", "32", "--max-new-tokens", "4"]
    proc = run(["ask", *flags, "--system", "rule " * 50, "hi"], tmp_path)
    assert_one_line_error(proc, "system_prompt", "context_length 32")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_offload_without_a_gpu_is_a_one_line_error(tiny_gguf: Path, tmp_path: Path) -> None:
    proc = run(["ask", "--model", str(tiny_gguf), "--offload", "hi"], tmp_path)
    assert_one_line_error(proc, "offload = true", "no CUDA GPU", "set offload = false")
    proc = run(["ask", "--model", str(tiny_gguf), "--device", "cuda:3", "hi"], tmp_path)
    assert_one_line_error(proc, "device 'cuda:3'")
