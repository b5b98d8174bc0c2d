"""`serve` request bodies from hypothesis (bounded: 120 requests, short replies, on
loopback): no body gives a 500 or a dead server; every refusal is a JSON error object."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import EngineQueue, LocalBackend, Profile
from tests.peers import free_port
from tui.serve.app import make_app
from tui.serve.run import load

FIELDS = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stream",
    "stop",
    "n",
    "stream_options",
    "content",
    "logprobs",
    "frequency_penalty",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
            "content": json_values,
        }
    ),
    max_size=3,
)
bodies = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5),
    st.fixed_dictionaries(
        {"messages": messages},
        optional={
            "max_tokens": st.integers(-5, 4),
            "stream": st.booleans(),
            "temperature": json_values,
        },
    ),
)
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/tokenize"]


@pytest.fixture(scope="module")
def url(tiny_gguf: Any) -> Iterator[str]:
    queue = EngineQueue(LocalBackend(1))
    profile = Profile(
        "fuzz", model=str(tiny_gguf), dtype="float32", context_length=256, max_new_tokens=4
    )
    info = load(queue, profile)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(make_app(queue, profile, info, None), "127.0.0.1", port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    queue.close()


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(endpoint=st.sampled_from(ENDPOINTS), body=bodies, raw=st.booleans())
def test_no_body_gives_a_500_or_kills_the_server(
    url: str, endpoint: str, body: Any, raw: bool
) -> None:
    content = json.dumps(body).encode() if not raw else json.dumps(body).encode()[:-1]
    headers = {"content-type": "application/json"}
    r = httpx.post(url + endpoint, content=content, headers=headers, timeout=30)
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert "error" in r.json()
    assert httpx.get(url + "/health", timeout=5).status_code == 200
