"""Prefill, decode one token, and the generation loop that yields typed events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import torch

from engine.background import background_busy
from engine.config import SamplingSettings
from engine.errors import ContextOverflowError
from engine.events import Done, Event, PrefillDone, TokenEvent
from engine.kv_cache import KVCache
from engine.metrics import STEP_NOT_BUILT, GenerationMetrics
from engine.model import Transformer
from engine.sampling import MirostatState, make_generator, refine_top_logits, sample
from engine.speculative import VERIFY_TOKENS, PromptLookup
from engine.timings import ReplyTimings
from engine.tokenizers import StreamDecoder, Tokenizer

PREFILL_CHUNK = 512  # tokens per prefill forward: bounds activation memory, allows cancel
COMPILED_FROM = 2  # the compiled step (engine/compiled.py) is traced for positions from this on


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


def uses_compiled_step(model: Transformer, pos: int) -> bool:
    """Whether a one-token step at ``pos`` runs the compiled step (engine/compiled.py)."""
    return model.decode_step is not None and pos >= COMPILED_FROM


@torch.inference_mode()
def decode_one_token(model: Transformer, cache: KVCache, token_id: int) -> torch.Tensor:
    """Feed one token at the cache's end; returns next-token logits [V] (through the compiled
    step once one is built: engine/compiled.py)."""
    device = model.norm.weight.device
    pos = cache.length
    tokens = torch.tensor([[token_id]], dtype=torch.long, device=device)
    step = model.decode_step if uses_compiled_step(model, pos) else None
    logits = (step or token_logits)(model, tokens, pos, cache)[0, -1]
    cache.append([token_id])
    return logits


def step_label(model: Transformer, steps: int, compiled: int) -> str:
    """GenerationMetrics.decode_step for a reply of ``steps`` decode forwards (one-token steps
    and drafts' verify forwards), ``compiled`` of them through a compiled step
    (engine/compiled.py)."""
    if compiled and compiled == steps:
        return "compiled"
    if compiled:
        return "eager, then compiled"
    if model.decode_step_error:
        return f"eager (compiled step failed: {model.decode_step_error})"
    if model.decode_step_unbuilt:
        return STEP_NOT_BUILT
    return "eager (compiled step building)" if background_busy() else ""


def drafts_verified_alike(model: Transformer, cache: KVCache) -> bool:
    """Whether a draft at the cache's end would be verified by the same kind of forward as the
    one-token step: both compiled, or both eager. Rows of the two kinds round a little apart,
    so a draft verified eagerly could part from what the compiled steps decode; and an eager
    forward over a draft costs about four compiled steps, so it would be slower too."""
    return uses_compiled_step(model, cache.length) == uses_compiled_verify(
        model, cache, VERIFY_TOKENS
    )


def uses_compiled_verify(model: Transformer, cache: KVCache, tokens: int) -> bool:
    """Whether a verify forward of ``tokens`` tokens at the cache's end runs the compiled verify
    step (engine/compiled.py): it takes VERIFY_TOKENS tokens, padded, so they must fit."""
    pos, room = cache.length, min(cache.max_len, model.rope.shape[0])
    return (
        model.verify_step is not None
        and tokens <= VERIFY_TOKENS
        and pos >= COMPILED_FROM
        and pos + VERIFY_TOKENS <= room
    )


@torch.inference_mode()
def verify(model: Transformer, cache: KVCache, ids: Sequence[int]) -> list[torch.Tensor]:
    """Feed ``ids`` (the last token, then a draft: engine/speculative.py) at the cache's end in
    one forward; returns the next-token logits [V] after each of them, in order. The compiled
    verify step takes a shorter draft padded with its last token: the padding's rows are
    dropped, and its keys and values lie past the cache's length, unread."""
    device = model.norm.weight.device
    fed = list(ids)
    step = model.verify_step if uses_compiled_verify(model, cache, len(fed)) else None
    if step is not None:
        fed += fed[-1:] * (VERIFY_TOKENS - len(fed))
    tokens = torch.tensor([fed], dtype=torch.long, device=device)
    logits = (step or token_logits)(model, tokens, cache.length, cache)[0]  # [T, V]
    cache.append(ids)
    return list(logits[: len(ids)].unbind(0))


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
    speculative: str = "off",
) -> Iterator[Event]:
    """Reuse the cached prefix, prefill the rest, then sample until stop/length/context/cancel.

    ``stop_ids`` replaces the tokenizer's stop ids (the bench passes none to decode exactly
    ``max_new_tokens`` tokens). ``speculative = "prompt-lookup"`` feeds drafts copied from the
    prompt and verifies them in one forward (engine/speculative.py); the tokens are the same.
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
    lookup = PromptLookup(prompt_ids) if speculative == "prompt-lookup" else None
    rows = [logits]  # logits rows not sampled yet: rows[0] is the next token's
    draft: list[int] = []  # fed after the row sampled last, unverified: rows[i + 1] follows it
    proposed = agreed = 0  # the current draft's length, and how many of it were sampled
    out_ids: list[int] = []
    text: list[str] = []
    stop_reason = "length"
    t_first = t_prefill
    steps = 0  # rows sampled after the prefill's (one a forward without a draft)
    sample_s = forward_s = detok_s = 0.0  # accumulated perf_counter deltas: no device syncs
    forwards = compiled = 0  # decode forwards (one-token or a draft's), and compiled ones
    waited = 0  # steps without a draft because no compiled verify step was there
    while True:
        t = time.perf_counter()
        token = sample(rows.pop(0), settings, recent, generator, sampler_state)
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
        if lookup is not None:
            lookup.push(token)
            if draft:  # the draft's next token is this one: the next row is right
                if draft[0] == token:
                    del draft[0]
                    agreed += 1
                else:
                    rows = []
            if proposed and not (draft and rows):  # the draft is done: accepted or not
                lookup.judged(proposed, agreed)
                proposed = agreed = 0
        if len(out_ids) >= max_new_tokens:
            break
        if cancel is not None and cancel.is_set():
            stop_reason = "cancelled"
            break
        if rows:
            steps += 1
            continue
        cache.truncate(cache.length - len(draft))  # rejected draft tokens
        draft = []
        if cache.length >= cache.max_len:
            stop_reason = "context"
            break
        t = time.perf_counter()
        if lookup is not None:
            if drafts_verified_alike(model, cache):
                draft = lookup.draft(cache.max_len - cache.length - 1)
                proposed = len(draft)
            else:  # compiled steps, and no compiled verify step (or no room for one)
                waited += model.verify_step is None
        forwards += 1
        if draft:
            compiled += uses_compiled_verify(model, cache, 1 + len(draft))
            rows = verify(model, cache, [token, *draft])
        else:
            compiled += uses_compiled_step(model, cache.length)
            rows = [decode_one_token(model, cache, token)]
        forward_s += time.perf_counter() - t
        steps += 1
    cache.truncate(cache.length - len(draft))  # a draft left when the reply ended
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
        draft_tokens=lookup.drafted if lookup else 0,
        accepted_tokens=lookup.accepted if lookup else 0,
        decode_step=step_label(model, forwards, compiled),
        drafts_waited=waited,
    )
    timings = ReplyTimings(
        prefill_s=t_prefill - t0,
        decode_forward_s=forward_s,
        sample_s=sample_s,
        detokenize_s=detok_s,
    )
    yield Done("".join(text), out_ids, stop_reason, metrics, timings=timings)
