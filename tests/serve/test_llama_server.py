"""The remote backend against llama.cpp's own server (`llama-server`, built by
`scripts/install.sh --test` from the llama.cpp source llama-cpp-python vendors), on loopback
with the embedded GGUF: the context from /props, the server's `timings` (its prefix-cache hits
as cached tokens, its own prefill and decode speeds) and a greedy reply equal to a plain
request's. llama-cpp-python's server reports none of these (tests/serve/test_llama_cpp_server.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import (
    Conversation,
    Done,
    EngineQueue,
    GenerationRequest,
    LoadRequest,
    ModelReady,
    Profile,
    RemoteBackend,
)
from tests.peers import (
    GREEDY,
    LLAMA_SERVER,
    Peer,
    free_port,
    llama_server_argv,
    plain_reply,
    running,
)

pytestmark = pytest.mark.slow

N_CTX = 2048


@pytest.fixture(scope="module")
def llama_server(default_path: Path) -> Iterator[Peer]:
    if not LLAMA_SERVER.exists():  # a failure, not a skip: the README's test command builds it
        pytest.fail(f"{LLAMA_SERVER} is missing: run `bash scripts/install.sh --test`")
    port = free_port()
    with running(llama_server_argv(default_path, port, N_CTX), port) as peer:
        yield peer


def profile(url: str, n: int = 12) -> Profile:
    return Profile(
        "llama-server", backend="openai", base_url=url, max_new_tokens=n, sampling=GREEDY
    )


def test_the_context_comes_from_props_and_turn_two_hits_the_prefix_cache(
    llama_server: Peer,
) -> None:
    queue = EngineQueue(RemoteBackend())
    try:
        p = profile(llama_server.url)
        ready = [e for e in queue.submit(LoadRequest(p)) if isinstance(e, ModelReady)]
        assert ready and ready[0].info.context_length == N_CTX  # /props n_ctx, not a guess
        chat = Conversation(queue, profile=p)
        dones = []
        for text in ("Name three colours.", "And three more."):
            events = list(chat.events(chat.send(text).ticket))
            dones.append(next(e for e in events if isinstance(e, Done)))
        first, second = (d.metrics for d in dones)
        assert second.cached_tokens > 0  # turn 1's prompt and reply, kept by the server
        assert second.prompt_tokens > first.prompt_tokens > 0
        assert second.context_limit == N_CTX
        assert first.server_prefill_tok_s > 0 and first.server_decode_tok_s > 0  # `timings`
        assert "server: prompt, cache, speeds" in first.source
    finally:
        queue.close()


def test_greedy_reply_equals_a_plain_request(llama_server: Peer) -> None:
    text = "Say hello in five words."
    plain = plain_reply(llama_server.url, text, 12)
    far = RemoteBackend()
    far.load(profile(llama_server.url), lambda d, t: None)
    events = list(far.generate(GenerationRequest("chat", text, GREEDY, 12), threading.Event()))
    done = events[-1]
    assert isinstance(done, Done) and done.text and done.text == plain
