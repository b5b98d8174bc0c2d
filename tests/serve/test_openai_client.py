"""The official `openai` client against `llama-tui serve` on loopback (the embedded model)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.peers import TEST_KEY

pytestmark = pytest.mark.slow

HELLO = [{"role": "user", "content": "Say hello in five words."}]


@pytest.fixture
def client(serve_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=serve_url, api_key=TEST_KEY, timeout=120, max_retries=0)


def test_chat_streaming_and_not_give_the_same_greedy_reply(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="any", messages=HELLO, max_tokens=12)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage is not None and whole.usage.prompt_tokens > 5
    timings = (whole.model_extra or {})["timings"]  # llama.cpp's object
    assert timings["predicted_n"] == whole.usage.completion_tokens

    stream = client.chat.completions.create(
        model="any",
        messages=HELLO,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # the same prompt again: all but the last prompt token come from the KV cache
    details = chunks[-1].usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == whole.usage.prompt_tokens - 1


def test_turn_two_reports_cached_tokens(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Name a colour."}]
    )
    history = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "And a fruit?"},
    ]
    second = client.chat.completions.create(model="any", messages=history)
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert first.usage is not None and cached >= first.usage.prompt_tokens - 1 > 0


def test_text_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="any", prompt="The capital of France is", max_tokens=4)
    assert "Paris" in reply.choices[0].text


def test_bad_requests_get_a_clear_400(client: openai.OpenAI, serve_url: str) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature must be a number"):
        client.chat.completions.create(model="any", messages=HELLO, temperature="hot")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="last message must be the user's"):
        client.chat.completions.create(
            model="any", messages=[{"role": "assistant", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError, match="over the 1008-token prompt budget"):
        long = [{"role": "user", "content": "word " * 1500}]
        client.chat.completions.create(model="any", messages=long)
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    bad = httpx.post(f"{serve_url}/chat/completions", content=b"{nope", headers=headers)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]


def test_wrong_and_missing_keys_are_refused(serve_url: str) -> None:
    wrong = openai.OpenAI(base_url=serve_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="any", messages=HELLO)
    assert httpx.get(f"{serve_url}/models").status_code == 401  # no key at all
    assert httpx.get(serve_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}


def test_a_client_that_leaves_mid_stream_stops_the_reply(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="any", messages=HELLO, max_tokens=400, stream=True
    )
    for n, _ in enumerate(stream):
        if n == 2:
            break
    stream.close()
    # the engine stopped within a token, so the next request is answered at once, in full
    again = client.chat.completions.create(model="any", messages=HELLO, max_tokens=4)
    assert again.usage is not None and again.usage.completion_tokens == 4
