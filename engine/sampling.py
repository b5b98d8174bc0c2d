"""Next-token sampling as small pure functions over a logits vector.

Order (as transformers applies its warpers): repetition penalty, temperature, top-k, top-p,
min-p, then a draw from a seeded generator. Temperature 0 is greedy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.config import SamplingSettings


def apply_repeat_penalty(
    logits: torch.Tensor, recent: Sequence[int], penalty: float
) -> torch.Tensor:
    # logits: [V]; a seen token's logit is divided by penalty if positive, multiplied if negative
    if penalty == 1.0 or not recent:
        return logits
    ids = torch.tensor(sorted(set(recent)), dtype=torch.long, device=logits.device)
    seen = logits[ids]
    logits = logits.clone()
    logits[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    # keep the k largest logits, -inf elsewhere; k <= 0 is off
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    # keep the smallest set of most likely tokens whose probability mass reaches p
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) >= p  # mass before this token already reaches p
    drop[0] = False
    return logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    # drop tokens whose probability is below p times the most likely token's
    if p <= 0.0:
        return logits
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < p * probs.max(), float("-inf"))


def greedy(logits: torch.Tensor) -> int:
    return int(torch.argmax(logits))


def sample(
    logits: torch.Tensor,
    settings: SamplingSettings,
    recent: Sequence[int],
    generator: torch.Generator,
) -> int:
    """logits: [V] float32 for the next position -> chosen token id."""
    logits = apply_repeat_penalty(
        logits,
        recent[-settings.repeat_last_n :] if settings.repeat_last_n else [],
        settings.repeat_penalty,
    )
    if settings.temperature == 0.0:
        return greedy(logits)
    logits = logits / settings.temperature
    logits = min_p(top_p(top_k(logits, settings.top_k), settings.top_p), settings.min_p)
    probs = logits.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
