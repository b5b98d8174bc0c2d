"""The generation loop: typed events, stop reasons, valid UTF-8 deltas, context limits."""

from __future__ import annotations

import copy

import pytest

from engine.config import SamplingSettings
from engine.errors import ContextOverflowError
from engine.events import Done, PrefillDone, TokenEvent
from engine.generate import generate
from engine.kv_cache import KVCache
from engine.loaders import LoadedModel
from engine.session import ChatSession

GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0)


def cache_for(m: LoadedModel, n: int) -> KVCache:
    a = m.args
    return KVCache(a.n_layers, a.n_kv_heads, a.head_dim, n)


def test_event_order_and_max_tokens(tiny_model: LoadedModel) -> None:
    events = list(ChatSession(tiny_model).send("hi", GREEDY, 6))
    assert isinstance(events[0], PrefillDone)
    assert isinstance(events[-1], Done)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    done = events[-1]
    assert done.stop_reason in ("length", "stop")
    if done.stop_reason == "length":
        assert len(done.token_ids) == 6
    assert "".join(t.text for t in tokens) == done.text
    assert done.metrics.generated_tokens == len(done.token_ids)


def test_stops_on_end_of_turn_token(default_model: LoadedModel) -> None:
    done = [
        e
        for e in ChatSession(default_model).send("What is the capital of France?", GREEDY, 64)
        if isinstance(e, Done)
    ][0]
    assert done.stop_reason == "stop"
    assert 2 not in done.token_ids  # <|im_end|> ends the reply and is not part of it


def test_text_deltas_are_valid_utf8_for_multibyte_characters(default_model: LoadedModel) -> None:
    tok = default_model.tokenizer
    text = "日本語とemoji 🧑‍🚀 and ü"
    ids = tok.encode(text)
    # feed the ids as a forced "generation" by checking the stream decoder directly
    from engine.tokenizers import StreamDecoder

    dec = StreamDecoder(tok)
    deltas = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(deltas) == text
    assert any(d == "" for d in deltas)  # some tokens end mid-character and were held back
    for d in deltas:
        d.encode("utf-8")  # never a lone surrogate or broken sequence


def test_prompt_longer_than_context_is_a_clear_error(tiny_model: LoadedModel) -> None:
    ids = tiny_model.tokenizer.encode("word " * 300)
    with pytest.raises(ContextOverflowError, match="context holds 64"):
        list(
            generate(
                tiny_model.model, tiny_model.tokenizer, cache_for(tiny_model, 64), ids, GREEDY, 8
            )
        )


def test_reply_stops_when_the_context_is_full(tiny_model: LoadedModel) -> None:
    ids = tiny_model.tokenizer.encode("word " * 20)
    cache = cache_for(tiny_model, len(ids) + 3)
    never_stops = copy.copy(tiny_model.tokenizer)  # the real tokenizer, without stop ids
    never_stops.stop_ids = frozenset()
    done = [
        e
        for e in generate(tiny_model.model, never_stops, cache, ids, GREEDY, 50)
        if isinstance(e, Done)
    ][0]
    assert done.stop_reason == "context"
    assert cache.length == cache.max_len
    assert len(done.token_ids) == cache.max_len - len(ids) + 1  # the last one is not cached
