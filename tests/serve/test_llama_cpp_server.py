"""The remote backend against a real llama.cpp server (llama-cpp-python's, the embedded GGUF).

That server reports neither `usage` in a stream nor llama.cpp's `timings`, so its cached-token
figure is not checked here (the metrics' source says "server: nothing"); `llama-tui serve`'s
tests and llama.cpp's own server's (tests/serve/test_llama_server.py) check cached tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import (
    Conversation,
    ConversationStore,
    Done,
    EngineQueue,
    GenerationRequest,
    LoadRequest,
    ModelReady,
    Profile,
    RemoteBackend,
    TokenEvent,
)
from tests.peers import GREEDY, Peer, free_port, llama_cpp_argv, plain_reply, running

pytestmark = pytest.mark.slow


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def llama_server(default_path: Path, port: int) -> Iterator[Peer]:
    with running(llama_cpp_argv(default_path, port), port) as peer:
        yield peer


def profile(url: str, n: int = 12) -> Profile:
    return Profile(
        "llamacpp",
        backend="openai",
        base_url=url,
        max_new_tokens=n,
        context_length=1024,
        sampling=GREEDY,
    )


def test_greedy_reply_equals_a_plain_request(llama_server: Peer) -> None:
    far = RemoteBackend()
    info = far.load(profile(llama_server.url), lambda d, t: None)
    assert "context_length" in info.weights  # the server does not say its context
    text = "Say hello in five words."

    def plain() -> str:
        return plain_reply(llama_server.url, text, 12)

    # llama-cpp-python reuses the prompt it evaluated last and re-runs only its final token; on
    # an AVX2 machine that batch shape changed a near tie ("world!" vs "world."). A plain
    # request first puts the server in the state both compared requests then meet.
    plain()
    events = list(far.generate(GenerationRequest("chat", text, GREEDY, 12), threading.Event()))
    done = events[-1]
    assert isinstance(done, Done) and done.text
    assert done.text == plain()
    assert done.metrics.source.startswith("client: TTFT, decode; server: nothing")


def test_server_killed_mid_reply_then_back(default_path: Path, port: int, tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "chats.db")
    queue = EngineQueue(RemoteBackend())
    try:
        with running(llama_cpp_argv(default_path, port), port) as peer:
            p = profile(peer.url, 400)
            assert any(isinstance(e, ModelReady) for e in queue.submit(LoadRequest(p)))
            chat = Conversation(queue, store, profile=p)
            partial, done = "", None
            for event in chat.events(chat.send("Write a long story about a dragon.").ticket):
                if isinstance(event, TokenEvent):
                    partial += event.text
                    if len(partial) > 20 and peer.proc.poll() is None:
                        peer.proc.kill()  # the server dies mid-stream
                elif isinstance(event, Done):
                    done = event
            assert done is not None and done.stop_reason == "error"
            assert done.text == partial and done.notice and "partial reply is kept" in done.notice
            assert "\n" not in done.notice
        rows = store.messages(chat.conv or 0)
        assert [(r["role"], r["content"], r["stopped"]) for r in rows][1] == (
            "assistant",
            partial,
            1,
        )
        with running(llama_cpp_argv(default_path, port), port):  # back on the same port
            chat.profile = profile(p.base_url, 6)
            events = list(chat.events(chat.send("And a short one?").ticket))
            done = next(e for e in events if isinstance(e, Done))
            assert done.stop_reason in ("stop", "length") and done.text
        assert len(store.messages(chat.conv or 0)) == 4
    finally:
        queue.close()
        store.close()
