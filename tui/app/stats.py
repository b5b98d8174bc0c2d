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
    PrefillDone,
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
    curve: list[tuple[float, float]] = field(default_factory=list)  # this reply: (s, tok/s)
    turns_seen: int = 0  # replies with a decode rate so far (turns keeps the last 60)
    last: GenerationMetrics | None = None
    memory: MemoryStats | None = None
    model: ModelInfo | None = None
    dropped_messages: int = 0  # messages of the conversation trimmed out of the context
    dropped_turns: int = 0  # user turns among them
    prompt_tokens: int = 0  # the current (or last) reply's prompt, from its PrefillDone
    cached_tokens: int = 0  # of those, reused from the KV cache
    last_done: Done | None = None  # the last reply's Done (its timings, energy, cost)
    render_lag_s: float = 0.0  # the last reply: its Done made by the engine -> drawn
    session_energy_j: float = 0.0  # every reply's energy since the app started
    session_energy_source: str = ""  # "estimate" when any of them was one
    session_cost: float | None = None  # at the profile's prices (None: none set)
    version: int = 0  # counts changes: each view redraws when it differs from what it drew

    def take(self, event: QueueEvent) -> None:
        """What a reply's event changes: a start, a token, its end, memory figures."""
        if isinstance(event, TokenEvent) and event.token_id >= 0:
            self.on_token(event.elapsed_s)
        elif isinstance(event, Started):
            self.start()
        elif isinstance(event, PrefillDone):
            self.on_prefill(event.prompt_tokens, event.cached_tokens)
        elif isinstance(event, Done):
            self.on_done(event.metrics, event)
        elif isinstance(event, Failed):
            self.on_stopped()
        elif isinstance(event, MemoryStats):
            self.on_memory(event)

    def start(self) -> None:
        self.streaming, self.tokens = True, 0
        self.prompt_tokens = self.cached_tokens = 0
        self.times.clear()
        self.curve = []
        self.version += 1

    def on_prefill(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.prompt_tokens, self.cached_tokens = prompt_tokens, cached_tokens
        self.version += 1

    def on_token(self, elapsed_s: float) -> None:
        if self.tokens == 0:
            self.first_s = elapsed_s
        self.tokens += 1
        self.last_s = elapsed_s
        self.times.append(elapsed_s)
        if self.tokens % 4 == 0 and len(self.times) > 1:
            span = self.times[-1] - self.times[0]
            if span > 0:
                rate = (len(self.times) - 1) / span
                self.recent.append(rate)
                self.curve.append((elapsed_s, rate))
        self.version += 1

    @property
    def live_tok_s(self) -> float:
        """Decode tokens/s of the reply so far (tokens after the first, over their time)."""
        span = self.last_s - self.first_s
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0

    def on_done(self, metrics: GenerationMetrics, done: Done | None = None) -> None:
        self.streaming = False
        if metrics.generated_tokens or metrics.prompt_tokens:
            self.last, self.last_done = metrics, done
            self.render_lag_s = 0.0
            if done is not None:
                self.add_session(done)
            self.prompt_tokens, self.cached_tokens = metrics.prompt_tokens, metrics.cached_tokens
            if metrics.decode_tok_s > 0:
                self.turns.append(metrics.decode_tok_s)
                self.turns_seen += 1
        self.version += 1

    def add_session(self, done: Done) -> None:
        if done.energy is not None:
            self.session_energy_j += done.energy.joules
            if not self.session_energy_source or done.energy.is_estimate:
                self.session_energy_source = done.energy.source
        if done.cost is not None:
            self.session_cost = (self.session_cost or 0.0) + done.cost

    def on_render_lag(self, seconds: float) -> None:
        self.render_lag_s = seconds
        self.version += 1

    def on_stopped(self) -> None:
        self.streaming = False
        self.version += 1

    def on_dropped(self, messages: int, turns: int) -> None:
        self.dropped_messages, self.dropped_turns = messages, turns
        self.version += 1

    def on_memory(self, memory: MemoryStats) -> None:
        self.memory = memory
        self.version += 1

    def on_model(self, info: ModelInfo) -> None:
        self.model = info
        self.version += 1

    @property
    def decode_tok_s(self) -> float:
        """What the headline shows: live while streaming, else the last reply's figure."""
        if self.streaming:
            return self.live_tok_s
        return self.last.decode_tok_s if self.last else 0.0

    @property
    def ttft_s(self) -> float | None:
        """Time to the first token: known as soon as it lands, not only when the reply ends."""
        if self.streaming:
            return self.first_s if self.tokens else None
        return self.last.ttft_s if self.last else None

    @property
    def context_used(self) -> int:
        """Tokens in the context: the prompt plus the reply so far while it streams."""
        if self.streaming and self.prompt_tokens:
            return self.prompt_tokens + self.tokens
        return self.last.context_used if self.last else 0

    @property
    def context_limit(self) -> int:
        if self.model is not None:
            return self.model.context_length
        return self.last.context_limit if self.last else 0
