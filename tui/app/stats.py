"""Live generation figures for the metrics pane, computed from event data only.

Rates come from the events' own timestamps (never the wall clock at redraw time), so the
same events always give the same figures: the snapshot tests rely on that.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine import (
    Done,
    Failed,
    GenerationMetrics,
    MemoryStats,
    ModelInfo,
    QueueEvent,
    Started,
    TokenEvent,
)

WINDOW = 8  # tokens per rolling-rate sample


@dataclass
class LiveStats:
    streaming: bool = False
    tokens: int = 0  # tokens of the current (or last) reply
    first_s: float = 0.0  # elapsed at the first token
    last_s: float = 0.0  # elapsed at the latest token
    times: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW + 1))
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=120))  # tok/s samples
    turns: deque[float] = field(default_factory=lambda: deque(maxlen=60))  # decode tok/s per reply
    last: GenerationMetrics | None = None
    memory: MemoryStats | None = None
    model: ModelInfo | None = None
    dropped_messages: int = 0  # messages of the conversation trimmed out of the context
    dropped_turns: int = 0  # user turns among them
    dirty: bool = True  # something changed since the pane last drew

    def take(self, event: QueueEvent) -> None:
        """What a reply's event changes: a start, a token, its end, memory figures."""
        if isinstance(event, TokenEvent) and event.token_id >= 0:
            self.on_token(event.elapsed_s)
        elif isinstance(event, Started):
            self.start()
        elif isinstance(event, Done):
            self.on_done(event.metrics)
        elif isinstance(event, Failed):
            self.on_stopped()
        elif isinstance(event, MemoryStats):
            self.on_memory(event)

    def start(self) -> None:
        self.streaming, self.tokens = True, 0
        self.times.clear()
        self.dirty = True

    def on_token(self, elapsed_s: float) -> None:
        if self.tokens == 0:
            self.first_s = elapsed_s
        self.tokens += 1
        self.last_s = elapsed_s
        self.times.append(elapsed_s)
        if self.tokens % 4 == 0 and len(self.times) > 1:
            span = self.times[-1] - self.times[0]
            if span > 0:
                self.recent.append((len(self.times) - 1) / span)
        self.dirty = True

    @property
    def live_tok_s(self) -> float:
        """Decode tokens/s of the reply so far (tokens after the first, over their time)."""
        span = self.last_s - self.first_s
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0

    def on_done(self, metrics: GenerationMetrics) -> None:
        self.streaming = False
        if metrics.generated_tokens or metrics.prompt_tokens:
            self.last = metrics
            if metrics.decode_tok_s > 0:
                self.turns.append(metrics.decode_tok_s)
        self.dirty = True

    def on_stopped(self) -> None:
        self.streaming = False
        self.dirty = True

    def on_dropped(self, messages: int, turns: int) -> None:
        self.dropped_messages, self.dropped_turns = messages, turns
        self.dirty = True

    def on_memory(self, memory: MemoryStats) -> None:
        self.memory = memory
        self.dirty = True

    def on_model(self, info: ModelInfo) -> None:
        self.model = info
        self.dirty = True

    @property
    def decode_tok_s(self) -> float:
        """What the headline shows: live while streaming, else the last reply's figure."""
        if self.streaming:
            return self.live_tok_s
        return self.last.decode_tok_s if self.last else 0.0
