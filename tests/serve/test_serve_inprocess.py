"""`serve`'s app in this process (uvicorn in a thread over a real engine queue), where the
engine can be watched: a client leaving mid-stream stops the reply; /health answers meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from engine import EngineQueue, LocalBackend, Profile
from tests.peers import GREEDY, free_port
from tui.serve.app import make_app
from tui.serve.run import load

pytestmark = pytest.mark.slow


@dataclass
class Served:
    url: str
    backend: LocalBackend
    queue: EngineQueue


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    backend = LocalBackend(1)
    queue = EngineQueue(backend)
    profile = Profile("s", dtype="float32", context_length=1024, sampling=GREEDY)
    info = load(queue, profile)
    port = free_port()
    config = uvicorn.Config(make_app(queue, profile, info, None), "127.0.0.1", port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield Served(f"http://127.0.0.1:{port}", backend, queue)
    server.should_exit = True
    thread.join(10)
    queue.close()


def test_leaving_mid_stream_stops_the_reply_and_health_answers_meanwhile(served: Served) -> None:
    body = {
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 400,
        "stream": True,
    }
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data:"):
                got += 1
                if got == 1:  # generating now: the server still answers /health
                    assert httpx.get(f"{served.url}/health").json() == {"status": "ok"}
                if got == 3:
                    break
    deadline = time.monotonic() + 60
    while served.queue.running is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    session = served.backend.session
    assert session is not None and session.messages[-1].role == "assistant"
    reply = session.messages[-1].content
    kept = len(session.loaded.tokenizer.encode(reply, allow_special=False))
    assert 3 <= kept < 40  # stopped within a few tokens of the disconnect, not at 400
