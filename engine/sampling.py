"""Next-token sampling as small pure functions over a logits vector.

Order (as transformers applies its warpers): repetition penalty, presence/frequency penalties
(both over the last ``repeat_last_n`` tokens), temperature, top-k, typical-p, top-p, min-p,
then a draw from a seeded generator. Top-k cuts the vocabulary first, so the later filters and
the draw run on its k survivors (``candidates``). Temperature 0 is greedy (after the penalties).
The default chain's shape (no typical-p, presence or frequency penalty) takes a shorter road
with the same result: ``top_rows`` applies the repeat penalty and the filters in Python to the
few dozen largest logits, and ``draw`` picks from uniforms the generator gives in batches.

With ``mirostat`` 1 or 2 (as llama.cpp's chain): penalties, temperature, then Mirostat
replaces top-k, typical-p, top-p and min-p. Mirostat keeps one number per conversation,
``MirostatState.mu``, which the caller creates (``new_sampler_state``) and passes to every
``sample`` call of that conversation; ``sample`` updates it after each draw.

First of all, where the head's logits are made (engine/generate.py), ``refine_top_logits``
recomputes the top few in float32 when the head is not float32.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.config import SamplingSettings

REFINE_K = 64  # logits recomputed in float32 when the head is not: more than the default top_k


def refine_top_logits(
    logits: torch.Tensor, h: torch.Tensor, rows: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Recompute the K largest logits in float32, in place, from the head's exact rows.

    A bfloat16 head rounds logits to 8 significant bits (steps of 0.125 near 25), which turns
    near-ties between the top tokens into exact ties; greedy decoding would then pick by token
    id. A 4-bit head is off by more (up to a few units); recomputing K above the default top_k
    gives exact logits to every token sampling keeps at default settings. The top K rows cost
    K x D multiply-adds, nothing next to the V x D head.
    """
    # logits: [B, T, V] float32; h: [B, T, D]; rows: ids [B, T, K] -> float32 rows [B, T, K, D]
    top = logits.topk(min(REFINE_K, logits.shape[-1]), dim=-1).indices  # [B, T, K]
    exact = torch.einsum("btkd,btd->btk", rows(top), h.float())
    logits.scatter_(-1, top, exact)


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


def apply_presence_frequency(
    logits: torch.Tensor, recent: Sequence[int], presence: float, frequency: float
) -> torch.Tensor:
    # logits: [V]; logit -= presence * [count > 0] + frequency * count, counts over `recent`
    if (presence == 0.0 and frequency == 0.0) or not recent:
        return logits
    counts = Counter(recent)
    ids = torch.tensor(list(counts), dtype=torch.long, device=logits.device)  # [U]
    n = torch.tensor(list(counts.values()), dtype=logits.dtype, device=logits.device)  # [U]
    logits = logits.clone()
    logits[ids] -= presence + frequency * n
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


def typical_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    # locally typical sampling (Meister et al. 2022; transformers' TypicalLogitsWarper): rank
    # tokens by |surprise - entropy| and keep the smallest set of them whose mass reaches p
    if p >= 1.0:
        return logits
    logp = logits.log_softmax(-1)  # [V]
    entropy = -(logp * logp.exp()).nansum()  # []; -inf * 0 = nan is left out
    shifted = (-logp - entropy).abs()  # [V]
    sorted_shifted, order = torch.sort(shifted)  # most typical first
    cum = logits[order].softmax(-1).cumsum(-1)  # [V]
    last = min(int((cum < p).sum()), logits.shape[-1] - 1)  # index of the token reaching p
    drop = sorted_shifted > sorted_shifted[last]  # [V] in typical order
    return logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    # drop tokens whose probability is below p times the most likely token's
    if p <= 0.0:
        return logits
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < p * probs.max(), float("-inf"))


@dataclass
class MirostatState:
    mu: float  # current surprise bound (bits); starts at 2 * tau, moved by eta after each draw


def new_sampler_state(settings: SamplingSettings) -> MirostatState:
    """A fresh per-conversation Mirostat state: mu = 2 * tau (as llama.cpp)."""
    return MirostatState(mu=2.0 * settings.mirostat_tau)


MIROSTAT_M = 100  # Mirostat v1: tokens used to estimate the Zipf exponent (llama.cpp's m)


def mirostat_v1_k(logits: torch.Tensor, mu: float, m: int = MIROSTAT_M) -> int:
    # logits: [V] -> k for top-k: estimate Zipf's exponent s_hat from the m most likely tokens,
    # then k = (eps * 2^mu / (1 - V^-eps))^(1/s_hat), eps = s_hat - 1 (llama.cpp mirostat)
    vocab = logits.shape[-1]
    probs = torch.topk(logits.double().softmax(-1), min(m, vocab)).values  # [m], descending
    i = torch.arange(probs.shape[-1] - 1, dtype=torch.float64, device=probs.device)  # [m-1]
    t = torch.log((i + 2) / (i + 1))  # [m-1]
    b = torch.log(probs[:-1] / probs[1:])  # [m-1]
    s_hat = float((t * b).sum() / (t * t).sum())
    eps = s_hat - 1.0
    try:
        k = (eps * 2.0**mu / (1.0 - vocab ** (-eps))) ** (1.0 / s_hat)
    except (OverflowError, ZeroDivisionError):
        k = math.inf
    if isinstance(k, complex) or math.isnan(k):
        k = math.inf  # a degenerate estimate (flat or one-token distribution): keep all
    return max(int(min(k, vocab)), 1)


def mirostat_v1(logits: torch.Tensor, mu: float, m: int = MIROSTAT_M) -> torch.Tensor:
    # logits: [V]; top-k with the k that Mirostat computes for this mu
    return top_k(logits, mirostat_v1_k(logits, mu, m))


def mirostat_v2(logits: torch.Tensor, mu: float) -> torch.Tensor:
    # logits: [V]; drop tokens whose surprise -log2 p exceeds mu, always keeping the top token
    surprise = -torch.log2(logits.softmax(-1))  # [V]
    drop = surprise > mu
    drop[torch.argmax(logits)] = False
    return logits.masked_fill(drop, float("-inf"))


def mirostat_update(mu: float, p_chosen: float, tau: float, eta: float) -> float:
    # mu_new = mu - eta * (observed surprise - tau), surprise = -log2 of the chosen token's
    # probability among the kept tokens
    return mu - eta * (-math.log2(p_chosen) - tau)


def greedy(logits: torch.Tensor) -> int:
    """The first index of the largest logit (a NaN counts as largest), as torch.argmax.
    On the CPU through numpy's argmax: 6 us on 49,152 float32 logits, torch's took 65."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
        return int(logits.numpy().argmax())
    return int(torch.argmax(logits))


def sample(
    logits: torch.Tensor,
    settings: SamplingSettings,
    recent: Sequence[int],
    generator: torch.Generator,
    state: MirostatState | None = None,
) -> int:
    """logits: [V] float32 for the next position -> chosen token id.

    With ``settings.mirostat`` 1 or 2, ``state.mu`` is read and updated after the draw;
    ``state`` None means a fresh state for this call only (nothing carried over). Temperature
    0 is greedy and leaves ``state`` untouched.
    """
    window = recent[-settings.repeat_last_n :] if settings.repeat_last_n else []
    if not settings.mirostat and chain_on_top_rows(settings, logits.shape[-1]):
        rows, weights = top_rows(logits, settings, window)  # the penalty included
        return rows[draw(weights, generator)]
    logits = apply_repeat_penalty(logits, window, settings.repeat_penalty)
    logits = apply_presence_frequency(
        logits, window, settings.presence_penalty, settings.frequency_penalty
    )
    if settings.temperature == 0.0:
        return greedy(logits)
    if settings.mirostat:
        logits = logits / settings.temperature
        state = state if state is not None else new_sampler_state(settings)
        if settings.mirostat == 1:
            logits = mirostat_v1(logits, state.mu)
        else:
            logits = mirostat_v2(logits, state.mu)
        probs = logits.softmax(-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
        state.mu = mirostat_update(
            state.mu, float(probs[token]), settings.mirostat_tau, settings.mirostat_eta
        )
        return token
    ids, probs = candidates(logits, settings)
    return int(ids[torch.multinomial(probs, 1, generator=generator)])


def chain_on_top_rows(settings: SamplingSettings, vocab: int) -> bool:
    """The default chain's shape (top-k, top-p, min-p, repeat penalty; no typical-p or
    presence/frequency penalties): ``top_rows`` computes it in Python on a few dozen rows."""
    s = settings
    plain = s.typical_p >= 1.0 and s.presence_penalty == 0.0 and s.frequency_penalty == 0.0
    return plain and s.temperature > 0.0 and 0 < s.top_k < vocab


def top_rows(
    logits: torch.Tensor, settings: SamplingSettings, window: Sequence[int]
) -> tuple[list[int], list[float]]:
    """(ids, weights) of what the repeat penalty, temperature, top-k, top-p and min-p keep,
    weights proportional to the probabilities (the top one 1.0), most likely first.

    The same tokens and probabilities as penalizing the whole vocabulary and then
    ``candidates``, with two torch calls instead of ~25: in a decode loop each small torch
    call cost 10-20 us (3-5 us alone; the forward between them leaves the CPU's caches
    cold). At the defaults, in SmolLM2's decode loop: 0.83-0.90 ms a token that way, 0.40 ms
    this way, half of it the top-k.

    A penalty only lowers a logit, so the k largest after it are among the k + U largest
    before it (U = the distinct tokens in the window): at most U of those are lowered, and
    whatever lies below them stays below the other k."""
    penalty = settings.repeat_penalty
    seen = set(window) if penalty != 1.0 else set()
    k = settings.top_k
    values, ids = torch.topk(logits, min(k + len(seen), logits.shape[-1]))
    rows = list(zip(values.tolist(), ids.tolist(), strict=True))  # descending
    if seen:
        rows = [
            (v / penalty if v > 0 else v * penalty, i) if i in seen else (v, i) for v, i in rows
        ]
        rows.sort(key=lambda row: row[0], reverse=True)  # stable: ties keep topk's order
    rows = rows[:k]
    top = rows[0][0] / settings.temperature
    weights = [math.exp(v / settings.temperature - top) for v, _ in rows]
    if settings.top_p < 1.0:  # keep a token while the mass before it is below p
        total, before = sum(weights), 0.0
        for n, w in enumerate(weights):
            if n and before >= settings.top_p * total:
                del weights[n:]
                break
            before += w
    cut = settings.min_p  # relative to the top token's weight, 1.0
    weights = [w if w >= cut else 0.0 for w in weights]
    return [i for _, i in rows[: len(weights)]], weights


UNIFORM_BATCH = 256  # uniforms drawn from a generator at a time (one torch call, not 256)
_uniforms: weakref.WeakKeyDictionary[torch.Generator, list[float]] = weakref.WeakKeyDictionary()


def uniform(generator: torch.Generator) -> float:
    """The generator's next number in [0, 1): drawn UNIFORM_BATCH at a time, so a seed gives
    the same numbers in the same order, one torch call per UNIFORM_BATCH draws."""
    left = _uniforms.get(generator)
    if not left:
        batch = torch.rand(UNIFORM_BATCH, generator=generator, device=generator.device)
        left = _uniforms[generator] = batch.tolist()[::-1]  # popped from the end
    return left.pop()


def draw(weights: Sequence[float], generator: torch.Generator) -> int:
    """An index drawn with probability proportional to its weight (weights >= 0, one > 0)."""
    target = uniform(generator) * sum(weights)
    total = 0.0
    for n, w in enumerate(weights):
        total += w
        if target < total:
            return n
    return max(n for n, w in enumerate(weights) if w > 0)  # rounding at the very top


def candidates(
    logits: torch.Tensor, settings: SamplingSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [V] after the penalties -> (ids [N], probs [N]) of the tokens that temperature,
    top-k, typical-p, top-p and min-p keep. Top-k runs first on the whole vocabulary (a positive
    temperature keeps the order, so it divides only the survivors); the other filters then see
    only the k survivors. That keeps the same tokens and probabilities as running each filter
    over the vocabulary (filtered tokens carry no mass), without a sort of the vocabulary."""
    k = settings.top_k
    if 0 < k < logits.shape[-1]:
        values, ids = torch.topk(logits, k)  # [k], descending
    else:
        values, ids = logits, torch.arange(logits.shape[-1], device=logits.device)
    values = typical_p(values / settings.temperature, settings.typical_p)
    values = min_p(top_p(values, settings.top_p), settings.min_p)
    return ids, values.softmax(-1)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
