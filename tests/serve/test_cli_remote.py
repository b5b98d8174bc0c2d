"""`ask`, `chat --plain` and `models` on remote profiles (`llama-tui serve` on loopback):
exit 2 for a configuration mistake, 1 for a server fault."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import TEST_KEY, TEST_KEY_ENV, free_port
from tui.cli.main import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
[profiles.far]
backend = "openai"
base_url = "{url}"
api_key_env = "{env}"
temperature = 0.0
max_new_tokens = 6

[profiles.dead]
backend = "openai"
base_url = "http://127.0.0.1:{dead}/v1"

[profiles.nomodel]
backend = "openai"
base_url = "{url}"
api_key_env = "{env}"
remote_model = "llama-9000"
"""


@pytest.fixture
def config(tmp_path: Path, serve_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(TEST_KEY_ENV, TEST_KEY)
    path = tmp_path / "llama-tui.toml"
    path.write_text(CONFIG.format(url=serve_url, env=TEST_KEY_ENV, dead=free_port()))
    return path


def test_ask_and_models(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--config", str(config), "--profile", "far", "--json", "Hi"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["text"] and len(record["token_ids"]) == record["generated_tokens"]
    assert record["source"].startswith("client: TTFT, decode; server: prompt, cache")
    assert main(["models", "--config", str(config), "--profile", "far"]) == 0
    assert capsys.readouterr().out == "SmolLM2-135M-Instruct.Q4_1.gguf\n"
    assert main(["prepare", "--config", str(config), "--profile", "far"]) == 0
    assert "runs on the server at http://127.0.0.1" in capsys.readouterr().err  # nothing loaded


def test_remote_ask_never_imports_torch(config: Path) -> None:
    """A remote profile's process needs no local engine: importing torch cost 2-3 s of start."""
    script = (
        "import sys; from tui.cli.main import main; "
        f"rc = main(['ask', '--config', {str(config)!r}, '--profile', 'far', 'Hi']); "
        "print('torch' in sys.modules, 'numpy' in sys.modules, rc, file=sys.stderr)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip()  # the reply
    assert proc.stderr.strip().splitlines()[-1] == "False False 0"


def test_chat_plain_turn_two_is_cached(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a colour.\nAnd a fruit?\n"))
    argv = ["chat", "--plain", "--no-save", "--json", "--config", str(config), "--profile", "far"]
    assert main(argv) == 0
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert second["cached_tokens"] >= first["prompt_tokens"] - 1 > 0


def test_exit_codes(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--config", str(config), "--profile", "dead", "Hi"]) == 1
    assert "is the server running?" in capsys.readouterr().err
    assert main(["ask", "--config", str(config), "--profile", "nomodel", "Hi"]) == 2
    err = capsys.readouterr().err
    assert "no such model; it has: SmolLM2-135M-Instruct.Q4_1.gguf" in err
    assert err.count("\n") == 1
    assert main(["ask", "--config", str(config), "--profile", "far", "--device", "cpu", "Hi"]) == 2
    assert "device is a local-engine key" in capsys.readouterr().err


def test_bench_remote_prints_both_sides(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--config", str(config), "--remote", "far", "--tokens", "4", "--runs", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "local (defaults)" in out and "remote (far)" in out
    assert "remote (far): client: TTFT, decode; server: prompt, cache, speeds" in out
    assert "the local side runs its eager decode step (compile off for this bench)" in out
