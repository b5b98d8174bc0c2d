"""The remote backend against `llama-tui serve`: the same greedy token ids as the local engine,
and trimming over a long conversation that keeps the server's prefix cache hitting."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from engine import (
    Done,
    Failed,
    GenerationRequest,
    LocalBackend,
    Profile,
    ProfileBackend,
    RemoteBackend,
    ServerError,
    UserError,
)
from tests.peers import GREEDY, TEST_KEY, TEST_KEY_ENV, free_port

pytestmark = pytest.mark.slow

LOCAL = Profile("local", dtype="float32", context_length=1024, sampling=GREEDY)


def remote(url: str, **keys: object) -> Profile:
    return replace(
        Profile("remote", backend="openai", base_url=url, api_key_env=TEST_KEY_ENV),
        sampling=GREEDY,
        **keys,  # type: ignore[arg-type]
    )


def turn(backend: LocalBackend | RemoteBackend | ProfileBackend, text: str, n: int = 12) -> Done:
    events = list(backend.generate(GenerationRequest("chat", text, GREEDY, n), threading.Event()))
    assert not any(isinstance(e, Failed) for e in events), events
    done = events[-1]
    assert isinstance(done, Done)
    return done


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_KEY_ENV, TEST_KEY)


def test_greedy_token_ids_match_the_local_engine(serve_url: str) -> None:
    local, far = LocalBackend(1), RemoteBackend()
    local.load(LOCAL, lambda d, t: None)
    info = far.load(remote(serve_url), lambda d, t: None)
    assert info.context_length == 1024  # the server's max_model_len
    for text in ("Say hello in five words.", "Now name a colour."):
        mine, theirs = turn(local, text), turn(far, text)
        assert theirs.token_ids == mine.token_ids and len(mine.token_ids) >= 5
        assert theirs.text == mine.text
    assert theirs.metrics.cached_tokens > 0  # turn 2 reuses the server's KV cache
    assert theirs.metrics.source == "client: TTFT, decode; server: prompt, cache, speeds"


def test_trimming_keeps_the_servers_prefix_cache_hitting(serve_url: str) -> None:
    far = RemoteBackend()
    far.load(remote(serve_url), lambda d, t: None)
    dones = [
        turn(far, f"Topic {i}: " + "tell me about rivers and hills " * 20, 4) for i in range(9)
    ]
    trimmed = [i for i, d in enumerate(dones) if d.notice and "left the context" in d.notice]
    assert trimmed, [d.metrics.prompt_tokens for d in dones]
    first = trimmed[0]
    assert dones[-1].dropped_messages > 0
    assert all(d.metrics.prompt_tokens <= 1024 - 4 for d in dones)
    # after the trim the prompt starts the same way each turn: the server reuses it
    after = dones[first + 1 :]
    assert after and all(d.metrics.cached_tokens > d.metrics.prompt_tokens // 2 for d in after)


def test_faults_are_one_line(serve_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    far = RemoteBackend()
    with pytest.raises(ServerError, match="connection refused|Connection refused"):
        far.load(remote(f"http://127.0.0.1:{free_port()}/v1"), lambda d, t: None)
    with pytest.raises(UserError, match="has no such model; it has: SmolLM2"):
        far.load(remote(serve_url, remote_model="nope"), lambda d, t: None)
    monkeypatch.setenv(TEST_KEY_ENV, "wrong")
    with pytest.raises(UserError, match=f"refused the API key.*\\${TEST_KEY_ENV}"):
        far.load(remote(serve_url), lambda d, t: None)
    monkeypatch.delenv(TEST_KEY_ENV)
    with pytest.raises(UserError, match=f"{TEST_KEY_ENV} is not set"):
        far.load(remote(serve_url), lambda d, t: None)


def test_pins_and_messages_cross_a_local_remote_local_switch(serve_url: str) -> None:
    both = ProfileBackend(max_loaded_models=1)
    both.load(LOCAL, lambda d, t: None)
    turn(both, "Name a colour.", 6)
    turn(both, "And a fruit?", 6)
    both.pin(0)  # the first user message
    messages, pinned = both.history()
    assert len(messages) == 4 and pinned == {0}

    both.load(remote(serve_url), lambda d, t: None)
    assert both.active is both.remote
    assert both.history() == (messages, {0})
    turn(both, "And a number?", 6)
    both.pin(2)
    remote_messages, _ = both.history()
    assert remote_messages[:4] == messages and len(remote_messages) == 6

    both.load(LOCAL, lambda d, t: None)  # back: the local engine takes what the server saw
    local = both.local
    assert isinstance(local, LocalBackend) and local.session is not None
    assert local.session.messages == remote_messages and local.session.pinned == {0, 2}
    assert both.history() == (remote_messages, {0, 2})
