"""Prompt-lookup decoding: the drafts, and the same tokens as plain decoding."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from engine.backend import GenerationRequest
from engine.chat_format import Message, encode_dialog
from engine.config import Profile, SamplingSettings, load_config, resolve_profile
from engine.errors import ConfigError
from engine.events import Done
from engine.generate import decode_one_token, generate, prefill, verify
from engine.kv_cache import KVCache
from engine.loaders import LoadedModel
from engine.local import LocalBackend
from engine.speculative import BACKOFF, BACKOFF_MAX, PromptLookup

GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0, seed=0)
PARAGRAPH = (
    "The river town of Alder Ford grew up around a wooden bridge built in 1742 by a miller "
    "named Thomas Hale. For a century the bridge carried wool carts to the market at "
    "Kingsbridge, and the town's inns, smithies and warehouses lined the road down to it. "
    "When the railway arrived in 1851 the wool trade moved to the station on the hill."
)


def test_draft_copies_what_followed_the_longest_earlier_match() -> None:
    lookup = PromptLookup([4, 5, 6, 7, 8, 9, 1, 6, 7, 2, 3, 5, 6, 7], draft_tokens=3)
    # suffix (5, 6, 7) last occurred at 1..3, followed by 8, 9, 1; (6, 7) alone is not looked
    # up (it last preceded 2)
    assert lookup.draft(room=10) == [8, 9, 1]
    assert lookup.draft(room=2) == [8, 9]  # no more than the cache has room for
    lookup.push(4)  # suffix (6, 7, 4): seen nowhere
    assert lookup.draft(room=10) == []
    assert lookup.drafted == 5


def test_a_four_token_match_beats_a_later_three_token_one() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 4, 8, 1, 2, 3, 4], draft_tokens=1)
    assert lookup.draft(room=10) == [5]  # (1, 2, 3, 4) -> 5, not (2, 3, 4) -> 8


def test_the_latest_occurrence_wins_and_new_tokens_are_indexed() -> None:
    lookup = PromptLookup([1, 2, 3, 5, 1, 2, 3, 4, 9], draft_tokens=2)
    for token in (1, 2, 3):
        lookup.push(token)
    assert lookup.draft(room=10) == [4, 9]  # (1, 2, 3) -> 4 at position 7, not 5 at position 3
    for token in (4, 9, 1, 2, 3):
        lookup.push(token)
    assert lookup.draft(room=10) == [4, 9]  # the tokens pushed since are in the index too


def quiet_spell(lookup: PromptLookup) -> int:
    """How many drafts in a row ``lookup`` withholds before it drafts again."""
    n = 0
    while not lookup.draft(room=10):
        n += 1
    return n


def test_a_rejected_draft_backs_off_longer_each_time_in_a_row() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 1, 2, 3])
    assert lookup.draft(room=10) == [4, 1, 2]
    spells = []
    for _ in range(6):  # rejected outright, again and again: open chat
        lookup.judged(proposed=3, accepted=0)
        spells.append(quiet_spell(lookup))
    assert spells == [BACKOFF, 2 * BACKOFF, 4 * BACKOFF, 8 * BACKOFF, BACKOFF_MAX, BACKOFF_MAX]
    lookup.judged(proposed=3, accepted=1)  # one token taken: drafting pays again
    assert lookup.draft(room=10) == [4, 1, 2] and lookup.accepted == 1
    lookup.judged(proposed=3, accepted=0)
    assert quiet_spell(lookup) == BACKOFF  # the doubling starts over


def _reply(m: LoadedModel, ids: list[int], settings: SamplingSettings, mode: str, n: int) -> Done:
    a = m.args
    cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, len(ids) + n + 16, dtype=m.dtype)
    events = list(
        generate(
            m.model, m.tokenizer, cache, ids, settings, n, stop_ids=frozenset(), speculative=mode
        )
    )
    done = events[-1]
    assert isinstance(done, Done)
    full = ids + done.token_ids
    # the cache holds the real sequence only: rejected draft tokens were dropped
    assert cache.tokens == full[: cache.length] and cache.length >= len(full) - 1
    return done


@pytest.fixture(scope="module")
def four_bit() -> LoadedModel:
    """The embedded model as the default profile places it on the CPU: int4 kernels."""
    from engine.loaders import load_profile_model

    profile = resolve_profile(load_config(None), None, {"device": "cpu", "compile": False})
    return load_profile_model(profile)


@pytest.mark.slow
def test_a_drafts_rows_equal_one_token_steps_bit_for_bit(four_bit: LoadedModel) -> None:
    # int4 kernels (row-independent) and attention row by row; a dense float32 matmul over
    # several rows may round differently from one row (the tiny model's), the int4 one does not
    m, a = four_bit, four_bit.args
    assert m.packed_4bit
    prompt, fed = [3, 9, 4, 1, 5, 9, 2, 6], [5, 3, 5, 8, 9]

    def cache() -> KVCache:
        return KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 32, dtype=m.dtype)

    one = cache()
    prefill(m.model, one, prompt, 0)
    steps = [decode_one_token(m.model, one, t) for t in fed]
    batched = cache()
    prefill(m.model, batched, prompt, 0)
    rows = verify(m.model, batched, fed)
    assert batched.tokens == one.tokens
    assert all(torch.equal(r, s) for r, s in zip(rows, steps, strict=True))


@pytest.mark.parametrize("settings", [GREEDY, replace(GREEDY, temperature=0.9, seed=7)])
def test_tiny_model_same_tokens_with_and_without_drafts(
    tiny_model: LoadedModel, settings: SamplingSettings
) -> None:
    ids = [3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 3, 4, 5]  # repeats: drafts are proposed at once
    plain = _reply(tiny_model, ids, settings, "off", 48)
    drafted = _reply(tiny_model, ids, settings, "prompt-lookup", 48)
    assert drafted.token_ids == plain.token_ids  # sampled: the same draws, in the same order
    assert drafted.metrics.draft_tokens > 0
    assert plain.metrics.draft_tokens == 0


@pytest.mark.slow
def test_default_model_rewrite_is_identical_and_mostly_drafted(four_bit: LoadedModel) -> None:
    m = four_bit
    prompt = "Repeat this paragraph exactly, word for word:\n\n" + PARAGRAPH
    ids = list(encode_dialog(m.tokenizer, m.chat_template, [Message("user", prompt)]))
    plain = _reply(m, ids, GREEDY, "off", 64)
    drafted = _reply(m, ids, GREEDY, "prompt-lookup", 64)
    assert drafted.token_ids == plain.token_ids
    metrics = drafted.metrics
    assert metrics.accepted_tokens > len(plain.token_ids) // 2, metrics  # copied, not decoded
    assert metrics.decode_steps == plain.metrics.decode_steps  # rows sampled, one per token


def test_speculative_key_is_checked() -> None:
    assert resolve_profile(load_config(None), None, {"speculative": "prompt-lookup"}).speculative
    with pytest.raises(ConfigError, match="speculative.*prompt-lookup"):
        resolve_profile(load_config(None), None, {"speculative": "ngram"})


def test_the_profile_key_reaches_the_conversation(tiny_profile: Profile) -> None:
    backend = LocalBackend()
    backend.load(replace(tiny_profile, speculative="prompt-lookup"), lambda done, total: None)
    request = GenerationRequest("complete", text="a b c d a b c d a b c d a b", max_new_tokens=24)
    done = list(backend.generate(request, threading.Event()))[-1]
    assert isinstance(done, Done) and done.metrics.draft_tokens > 0
    backend.load(tiny_profile, lambda done, total: None)  # the same model: a live switch
    done = list(backend.generate(request, threading.Event()))[-1]
    assert isinstance(done, Done) and done.metrics.draft_tokens == 0
