"""Typed events the engine yields; the TUI, CLI, benchmark and tests consume the same stream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from engine.energy import EnergyReading
from engine.metrics import GenerationMetrics
from engine.timings import ReplyTimings


@dataclass(frozen=True)
class LoadProgress:
    done: int  # units done (tensors)
    total: int
    message: str = ""


@dataclass(frozen=True)
class TurnStarted:
    """A turn's prompt was fitted to the context: the first event of a turn, before PrefillDone."""

    user: int | None  # a chat turn: its user message's index in the conversation (else None)
    reply: int | None  # a chat turn: its reply's index once it ends (user + 1)
    notice: str | None = None  # one line for the user: turns trimmed, an over-long prompt cut


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
    stop_reason: str  # "stop" | "length" | "context" | "cancelled" | "error" (the server failed
    # mid-reply: the partial text is kept, the notice says what happened)
    metrics: GenerationMetrics = field(default_factory=lambda: GenerationMetrics())
    # chat turns only (None otherwise): messages[:context_start] left the model's context,
    # except the pinned indexes, as the session stands after this turn
    context_start: int | None = None
    pinned: tuple[int, ...] = ()
    notice: str | None = None  # one line for the user: turns trimmed, an over-long prompt cut
    timings: ReplyTimings = field(default_factory=ReplyTimings)  # where the time went
    energy: EnergyReading | None = None  # the reply's energy (None: not through the queue)
    cost: float | None = None  # at the profile's cost_per_1k_*_tokens (None: no price set)

    @property
    def dropped_messages(self) -> int:
        """Messages no longer in the model's context after this turn (0 if not a chat turn)."""
        start = self.context_start or 0
        return sum(1 for i in range(start) if i not in self.pinned)


@dataclass(frozen=True)
class Failed:
    message: str  # one line for the user
    kept: int | None = None  # a chat turn: messages the conversation still holds (None: unknown)
    server: bool = False  # a remote server's fault (exit 1), not a configuration mistake (2)


@dataclass(frozen=True)
class Tokens:
    """A TokenizeRequest's answer."""

    ids: tuple[int, ...]
    context_length: int  # tokens the active model's context holds
    estimated: bool = False  # True: counted without the model's tokenizer (ids are empty)
    count: int = -1  # tokens counted (-1: len(ids))

    @property
    def n(self) -> int:
        return len(self.ids) if self.count < 0 else self.count


@dataclass(frozen=True)
class Pinned:
    """Which messages trimming keeps, after a pin or an unpin."""

    context_start: int  # messages[:context_start] left the context, except the pinned ones
    pinned: tuple[int, ...]


Event = LoadProgress | TurnStarted | PrefillDone | TokenEvent | Done | Failed | Pinned | Tokens


def add_timings(events: Iterator[Event], **seconds: Any) -> Iterator[Event]:
    """The events, Done's timings with ``seconds`` added to the phases named."""
    for event in events:
        if isinstance(event, Done):
            t = event.timings
            added = {k: getattr(t, k) + v for k, v in seconds.items()}
            event = replace(event, timings=replace(t, **added))
        yield event
