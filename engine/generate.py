"""Prefill, decode one token, and the generation loop that yields typed events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import torch

from engine.config import SamplingSettings
from engine.errors import ContextOverflowError
from engine.events import Done, Event, PrefillDone, TokenEvent
from engine.kv_cache import KVCache
from engine.metrics import GenerationMetrics
from engine.model import Transformer
from engine.sampling import MirostatState, make_generator, refine_top_logits, sample
from engine.timings import ReplyTimings
from engine.tokenizers import StreamDecoder, Tokenizer

PREFILL_CHUNK = 512  # tokens per prefill forward: bounds activation memory, allows cancel


def token_logits(
    model: Transformer,
    tokens: torch.Tensor,
    start: int = 0,
    cache: KVCache | None = None,
    last_only: bool = False,
) -> torch.Tensor:
    """The model's logits [B, T, V] float32 to choose tokens from: a head that is not float32
    (bfloat16, or 4-bit) has each row's top logits recomputed in float32 from its exact rows
    (sampling.refine_top_logits)."""
    h = model.hidden(tokens, start, cache, last_only)  # [B, T, D]
    logits = model.head(h)
    if not model.head_is_float32:
        refine_top_logits(logits, h, model.head_rows)
    return logits


@torch.inference_mode()
def prefill(model: Transformer, cache: KVCache, ids: Sequence[int], start: int) -> torch.Tensor:
    """Run ids[start:] at positions start.. into the cache; returns next-token logits [V]."""
    device = model.norm.weight.device
    logits = torch.empty(0)
    for pos in range(start, len(ids), PREFILL_CHUNK):
        chunk = list(ids[pos : pos + PREFILL_CHUNK])
        tokens = torch.tensor([chunk], dtype=torch.long, device=device)
        logits = token_logits(model, tokens, pos, cache, last_only=True)[0, -1]
        cache.append(chunk)
    return logits


@torch.inference_mode()
def decode_one_token(model: Transformer, cache: KVCache, token_id: int) -> torch.Tensor:
    """Feed one token at the cache's end; returns next-token logits [V] (through the compiled
    step once one is built: engine/compiled.py)."""
    device = model.norm.weight.device
    pos = cache.length
    tokens = torch.tensor([[token_id]], dtype=torch.long, device=device)
    step = model.decode_step or token_logits
    logits = step(model, tokens, pos, cache)[0, -1]
    cache.append([token_id])
    return logits


def generate(
    model: Transformer,
    tokenizer: Tokenizer,
    cache: KVCache,
    prompt_ids: Sequence[int],
    settings: SamplingSettings,
    max_new_tokens: int,
    cancel: threading.Event | None = None,
    sampler_state: MirostatState | None = None,
    stop_ids: frozenset[int] | None = None,
) -> Iterator[Event]:
    """Reuse the cached prefix, prefill the rest, then sample until stop/length/context/cancel.

    ``stop_ids`` replaces the tokenizer's stop ids (the bench passes none to decode exactly
    ``max_new_tokens`` tokens).
    """
    stops = tokenizer.stop_ids if stop_ids is None else stop_ids
    t0 = time.perf_counter()
    if len(prompt_ids) >= cache.max_len:
        raise ContextOverflowError(
            f"prompt is {len(prompt_ids)} tokens but the context holds {cache.max_len}: "
            "shorten it or raise context_length"
        )
    cached = min(cache.common_prefix(prompt_ids), len(prompt_ids) - 1)  # recompute >= 1 token
    cache.truncate(cached)
    logits = prefill(model, cache, prompt_ids, cached)
    t_prefill = time.perf_counter()
    yield PrefillDone(len(prompt_ids), cached, t_prefill - t0)

    generator = make_generator(settings.seed)
    recent = list(prompt_ids)
    decoder = StreamDecoder(tokenizer)
    out_ids: list[int] = []
    text: list[str] = []
    stop_reason = "length"
    t_first = t_prefill
    steps = 0
    sample_s = forward_s = detok_s = 0.0  # accumulated perf_counter deltas: no device syncs
    while True:
        t = time.perf_counter()
        token = sample(logits, settings, recent, generator, sampler_state)
        now = time.perf_counter()
        sample_s += now - t
        if not out_ids:
            t_first = now
        if token in stops:
            stop_reason = "stop"
            break
        out_ids.append(token)
        recent.append(token)
        delta = decoder.push(token)
        t = time.perf_counter()
        detok_s += t - now
        text.append(delta)
        yield TokenEvent(token, delta, t - t0)
        if len(out_ids) >= max_new_tokens:
            break
        if cancel is not None and cancel.is_set():
            stop_reason = "cancelled"
            break
        if cache.length >= cache.max_len:
            stop_reason = "context"
            break
        t = time.perf_counter()
        logits = decode_one_token(model, cache, token)
        forward_s += time.perf_counter() - t
        steps += 1
    t_end = time.perf_counter()
    tail = decoder.flush()
    if tail:
        text.append(tail)
        yield TokenEvent(-1, tail, t_end - t0)
    detok_s += time.perf_counter() - t_end
    metrics = GenerationMetrics(
        prompt_tokens=len(prompt_ids),
        cached_tokens=cached,
        generated_tokens=len(out_ids),
        decode_steps=steps,
        ttft_s=t_first - t0,
        prefill_s=t_prefill - t0,
        decode_s=t_end - t_first,
        context_used=cache.length,
        context_limit=cache.max_len,
    )
    timings = ReplyTimings(
        prefill_s=t_prefill - t0,
        decode_forward_s=forward_s,
        sample_s=sample_s,
        detokenize_s=detok_s,
    )
    yield Done("".join(text), out_ids, stop_reason, metrics, timings=timings)
