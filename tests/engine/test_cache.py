"""The KV cache: incremental decoding equals a full forward; later turns reuse the prefix."""

from __future__ import annotations

import pytest
import torch

from engine.config import SamplingSettings
from engine.errors import UserError
from engine.events import Done, Event
from engine.generate import decode_one_token, prefill
from engine.kv_cache import KVCache
from engine.loaders import LoadedModel
from engine.session import ChatSession

GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0)


def new_cache(m: LoadedModel) -> KVCache:
    a = m.args
    return KVCache(a.n_layers, a.n_kv_heads, a.head_dim, m.context_length, dtype=m.dtype)


def done_of(events: object) -> Done:
    found = [e for e in events if isinstance(e, Done)]  # type: ignore[attr-defined]
    assert len(found) == 1
    return found[0]


def test_kv_cache_prefix_bookkeeping() -> None:
    cache = KVCache(1, 1, 4, 8)
    cache.append([5, 6, 7])
    assert cache.common_prefix([5, 6, 9, 9]) == 2
    assert cache.common_prefix([5, 6, 7, 8]) == 3
    cache.truncate(1)
    assert cache.tokens == [5] and cache.length == 1
    k = torch.ones(1, 1, 2, 4)
    kk, vv = cache.update(0, 1, k, 2 * k)
    assert kk.shape == (1, 1, 3, 4) and torch.equal(vv[:, :, 1:], 2 * k)


@pytest.mark.parametrize("fixture", ["tiny_model", "default_model"])
def test_incremental_decoding_equals_full_forward(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    m: LoadedModel = request.getfixturevalue(fixture)
    ids = m.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 3)
    with torch.inference_mode():
        full = m.model(torch.tensor([ids]))[0]  # [T, V]
    cache = new_cache(m)
    half = len(ids) // 2
    logits = [prefill(m.model, cache, ids[:half], 0)]
    for t in ids[half:-1]:
        logits.append(decode_one_token(m.model, cache, t))
    inc = torch.stack(logits)
    torch.testing.assert_close(inc, full[half - 1 : -1], rtol=1e-4, atol=1e-4)
    assert cache.tokens == ids[:-1]


def test_prefill_from_a_cached_prefix_equals_prefill_from_scratch(tiny_model: LoadedModel) -> None:
    ids = tiny_model.tokenizer.encode("one two three four five six seven eight nine ten")
    cache = new_cache(tiny_model)
    prefill(tiny_model.model, cache, ids[:4], 0)
    reused = prefill(tiny_model.model, cache, ids, 4)  # multi-token chunk at an offset
    scratch = prefill(tiny_model.model, new_cache(tiny_model), ids, 0)
    torch.testing.assert_close(reused, scratch, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_second_turn_reuses_cache_and_matches_a_fresh_prefill(default_model: LoadedModel) -> None:
    warm = ChatSession(default_model, system_prompt="You are terse.")
    first = done_of(warm.send("My name is Ana. Say hello.", GREEDY, 24))
    assert first.metrics.cached_tokens == 0
    history = list(warm.messages)
    second = done_of(warm.send("What is my name?", GREEDY, 24))
    assert second.metrics.cached_tokens > first.metrics.prompt_tokens - 1

    cold = ChatSession(default_model, system_prompt="You are terse.")
    cold.messages = history
    scratch = done_of(cold.send("What is my name?", GREEDY, 24))
    assert scratch.metrics.cached_tokens == 0
    assert second.token_ids == scratch.token_ids
    assert second.metrics.prompt_tokens == scratch.metrics.prompt_tokens


def test_regenerate_and_edit_reuse_the_prefix(tiny_model: LoadedModel) -> None:
    s = ChatSession(tiny_model)
    first = done_of(s.send("hello there", GREEDY, 5))
    again = done_of(s.regenerate(GREEDY, 5))
    assert again.token_ids == first.token_ids  # greedy: same reply
    assert again.metrics.cached_tokens == again.metrics.prompt_tokens - 1
    edited = done_of(s.edit_last("hello where", GREEDY, 5))
    assert 0 < edited.metrics.cached_tokens < edited.metrics.prompt_tokens - 1
    assert [m.content for m in s.messages if m.role == "user"] == ["hello where"]


def test_edit_message_forks_at_an_earlier_turn(tiny_model: LoadedModel) -> None:
    s = ChatSession(tiny_model)
    done_of(s.send("first question", GREEDY, 4))
    done_of(s.send("second question", GREEDY, 4))
    done_of(s.send("third question", GREEDY, 4))
    kept = list(s.messages[:2])
    edited = done_of(s.edit_message(2, "second, edited", GREEDY, 4))
    assert s.messages[:2] == kept and len(s.messages) == 4
    assert s.messages[2].content == "second, edited"
    prefix = len(s.prompt_ids(kept))
    assert prefix - 1 <= edited.metrics.cached_tokens < edited.metrics.prompt_tokens
    scratch = ChatSession(tiny_model)
    scratch.messages = kept
    assert done_of(scratch.send("second, edited", GREEDY, 4)).token_ids == edited.token_ids
    for bad in (1, 7, -1):  # an assistant message, past the end
        with pytest.raises(UserError, match=f"message {bad} is not a user message"):
            s.edit_message(bad, "x", GREEDY, 4)


def test_cancelled_reply_is_kept_and_cache_stays_valid(tiny_model: LoadedModel) -> None:
    import threading

    s = ChatSession(tiny_model)
    cancel = threading.Event()
    events: list[Event] = []
    for e in s.send("count to ten", SamplingSettings(temperature=0.0), 50, cancel):
        events.append(e)
        if len([x for x in events if type(x).__name__ == "TokenEvent"]) == 3:
            cancel.set()
    done = done_of(events)
    assert done.stop_reason == "cancelled" and len(done.token_ids) == 3
    assert s.messages[-1].role == "assistant" and s.messages[-1].content == done.text
    # everything kept in the cache is consistent: the next turn reuses it and matches scratch
    nxt = done_of(s.send("go on", GREEDY, 4))
    cold = ChatSession(tiny_model)
    cold.messages = s.messages[:-2]
    assert done_of(cold.send("go on", GREEDY, 4)).token_ids == nxt.token_ids
    assert nxt.metrics.cached_tokens > 0
