"""Sampler math on hand-made distributions, and seeded determinism end to end."""

from __future__ import annotations

import math

import torch

from engine.config import SamplingSettings
from engine.events import Done
from engine.loaders import LoadedModel
from engine.sampling import apply_repeat_penalty, make_generator, min_p, sample, top_k, top_p
from engine.session import ChatSession

# probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625
PROBS = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> list[int]:
    return [i for i, v in enumerate(logits.tolist()) if v != -math.inf]


def test_top_k_keeps_the_k_largest() -> None:
    assert kept(top_k(LOGITS, 2)) == [0, 1]
    assert kept(top_k(LOGITS, 0)) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    assert kept(top_p(LOGITS, 0.5)) == [0]
    assert kept(top_p(LOGITS, 0.6)) == [0, 1]
    assert kept(top_p(LOGITS, 0.8)) == [0, 1, 2]
    assert kept(top_p(LOGITS, 1.0)) == [0, 1, 2, 3, 4]
    shuffled = LOGITS[[3, 0, 4, 2, 1]]  # order of the vocabulary must not matter
    assert kept(top_p(shuffled, 0.6)) == [1, 4]


def test_min_p_is_relative_to_the_top_token() -> None:
    assert kept(min_p(LOGITS, 0.3)) == [0, 1]  # 0.3 * 0.5 = 0.15
    assert kept(min_p(LOGITS, 0.1)) == [0, 1, 2, 3, 4]


def test_repeat_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = apply_repeat_penalty(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]
    assert logits.tolist() == [2.0, -2.0, 1.0]  # input untouched


def test_greedy_and_seeded_sampling() -> None:
    greedy = SamplingSettings(temperature=0.0)
    assert sample(LOGITS, greedy, [], make_generator(0)) == 0
    s = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    g1, g2 = make_generator(123), make_generator(123)
    a = [sample(LOGITS, s, [], g1) for _ in range(50)]
    b = [sample(LOGITS, s, [], g2) for _ in range(50)]
    assert a == b
    # empirical frequencies follow the distribution
    g = make_generator(1)
    counts = torch.bincount(
        torch.tensor([sample(LOGITS, s, [], g) for _ in range(4000)]), minlength=5
    )
    assert torch.allclose(counts / 4000, PROBS, atol=0.03)
    # top-k 1 is greedy whatever the temperature
    one = SamplingSettings(temperature=5.0, top_k=1)
    assert {sample(LOGITS, one, [], g) for _ in range(20)} == {0}


def test_same_seed_same_tokens_end_to_end(default_model: LoadedModel) -> None:
    s = SamplingSettings(temperature=1.2, top_k=50, top_p=0.95, min_p=0.0, seed=42)

    def run(settings: SamplingSettings) -> list[int]:
        events = ChatSession(default_model).send("Tell me a story.", settings, 16)
        return [e for e in events if isinstance(e, Done)][0].token_ids

    first = run(s)
    assert run(s) == first
    assert len(first) > 0
    other = SamplingSettings(temperature=1.2, top_k=50, top_p=0.95, min_p=0.0, seed=43)
    assert run(other) != first
