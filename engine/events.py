"""Typed events the engine yields; the TUI, CLI, benchmark and tests consume the same stream."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.metrics import GenerationMetrics


@dataclass(frozen=True)
class LoadProgress:
    done: int  # units done (tensors)
    total: int
    message: str = ""


@dataclass(frozen=True)
class PrefillDone:
    prompt_tokens: int
    cached_tokens: int  # reused from the KV cache
    seconds: float


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    text: str  # valid UTF-8 delta (may be "" while a multi-byte character is incomplete)
    elapsed_s: float  # since the request started


@dataclass(frozen=True)
class Done:
    text: str
    token_ids: list[int]
    stop_reason: str  # "stop" | "length" | "context" | "cancelled"
    metrics: GenerationMetrics = field(default_factory=lambda: GenerationMetrics())
    # chat turns only (None otherwise): messages[:context_start] left the model's context,
    # except the pinned indexes, as the session stands after this turn
    context_start: int | None = None
    pinned: tuple[int, ...] = ()
    notice: str | None = None  # one line for the user: turns trimmed, an over-long prompt cut


@dataclass(frozen=True)
class Failed:
    message: str  # one line for the user


Event = LoadProgress | PrefillDone | TokenEvent | Done | Failed
