"""Real servers on loopback for the remote tests: `llama-tui serve` and llama-cpp-python's
server, each a subprocess on a free port, waited for by /v1/models and shut down by its fixture.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from engine import SamplingSettings

REPO = Path(__file__).resolve().parents[1]
START_S = 180.0  # the embedded model loads in seconds; a busy 2-core machine is slower
TEST_KEY_ENV = "LLAMA_TUI_TEST_SERVE_KEY"
TEST_KEY = "test-key-not-a-secret"


# greedy with every filter off: what the remote tests ask a server for
GREEDY = SamplingSettings(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)


def plain_reply(url: str, text: str, max_tokens: int) -> str:
    """A server's greedy answer to one user message, asked with httpx alone (no llama-tui)."""
    body = {
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
        "repeat_penalty": 1.0,
    }
    reply = httpx.post(f"{url}/chat/completions", json=body, timeout=120)
    return str(reply.json()["choices"][0]["message"]["content"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Peer:
    url: str  # the base URL, …/v1
    proc: subprocess.Popen[bytes]


@contextmanager
def running(argv: Sequence[str], port: int, env: dict[str, str] | None = None) -> Iterator[Peer]:
    """Run `argv` until /v1/models answers on `port` (the fixture ends it, killed or not)."""
    log = open(os.devnull, "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        argv, cwd=REPO, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_S
        headers = {"Authorization": f"Bearer {TEST_KEY}"}
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[2]} exited with {proc.returncode} before it served")
            try:
                if httpx.get(f"{url}/models", headers=headers, timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[2]} did not answer within {START_S:.0f} s")
            time.sleep(0.3)
        yield Peer(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


SERVE_CONFIG = """\
[defaults]
dtype = "float32"
context_length = 1024
max_new_tokens = 16
temperature = 0.0
repeat_penalty = 1.0
top_k = 0
top_p = 1.0
min_p = 0.0
seed = 0
"""


def serve_argv(config: Path, port: int, key: bool = True) -> list[str]:
    argv = [sys.executable, "-m", "tui.cli.main", "serve", "--config", str(config)]
    argv += ["--port", str(port)]
    return argv + (["--api-key-env", TEST_KEY_ENV] if key else [])


def llama_cpp_argv(model: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        "1",
        "--n_ctx",
        "1024",
        "--seed",
        "0",
    ]


LLAMA_SERVER = Path(sys.prefix) / "bin" / "llama-server"  # scripts/install.sh --test builds it


def llama_server_argv(model: Path, port: int, n_ctx: int = 2048) -> list[str]:
    """llama.cpp's own server (not llama-cpp-python's), 1 thread, `n_ctx` tokens of context."""
    argv = [str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    return argv + ["-t", "1", "-c", str(n_ctx), "--seed", "0", "--no-webui"]
