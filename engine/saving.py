"""Saving replies as they stream, and the record of a reply (the chat controller's helpers).

A reply is written when its first token arrives, rewritten at least every SAVE_INTERVAL_S
while it streams, and once more with its metrics when it ends or is stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engine.events import Done
from engine.metrics import GenerationMetrics, gpu_memory_bytes, rss_bytes
from engine.store import ConversationStore

SAVE_INTERVAL_S = 1.0  # a streaming reply is written to disk at least this often
TITLE_CHARS = 60


def title_of(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


def tokens_processed(m: GenerationMetrics) -> int:
    """Tokens a reply ran through the model: the prompt's uncached ones and the reply's."""
    return m.computed_tokens + m.generated_tokens


def reply_record(done: Done, conversation: bool = False) -> dict[str, Any]:
    """A reply's text, ids and figures; `conversation` adds what the user is shown about the
    conversation (messages out of context, the trim notice)."""
    m = done.metrics
    record: dict[str, Any] = {
        "text": done.text,
        "token_ids": done.token_ids,
        "prompt_tokens": m.prompt_tokens,
        "cached_tokens": m.cached_tokens,
        "generated_tokens": m.generated_tokens,
        "ttft_s": round(m.ttft_s, 4),
        "prefill_tok_s": round(m.prefill_tok_s, 2),
        "decode_tok_s": round(m.decode_tok_s, 2),
        "context_used": m.context_used,
        "context_limit": m.context_limit,
        "stop_reason": done.stop_reason,
        **({"source": m.source} if m.source else {}),
        "context_tokens": m.context_used,  # tokens in context after the turn
        "computed_tokens": m.computed_tokens,  # prompt tokens run through the model this turn
    }
    if m.decode_step:  # which decode step ran: "compiled", "eager (compiled step building)", ...
        record["decode_step"] = m.decode_step
    if m.draft_tokens:  # speculative = "prompt-lookup": tokens drafted, and of those accepted
        record["draft_tokens"] = m.draft_tokens
        record["accepted_tokens"] = m.accepted_tokens
    if m.drafts_waited:  # steps that made no draft: the compiled verify step was not built yet
        record["drafts_waited"] = m.drafts_waited
    if m.offload_bytes_per_token:  # weights streamed from CPU memory this reply
        record["offload_bytes_per_token"] = int(m.offload_bytes_per_token)
        record["offload_gb_s"] = round(m.offload_gb_s, 2)
        record["offload_wait_s"] = round(m.offload_wait_s, 4)
    record["timings"] = done.timings.as_dict()  # where the reply's time went (engine/timings.py)
    if done.energy is not None:  # "estimate": CPU time x cpu_watts_per_core, not a measurement
        record["energy_j"] = round(done.energy.joules, 4)
        record["energy_source"] = done.energy.source
        record["energy_j_per_1k_tokens"] = round(done.energy.per_1k(tokens_processed(m)), 4)
    if done.cost is not None:  # at the profile's cost_per_1k_*_tokens
        record["cost"] = round(done.cost, 8)
    record["rss_bytes"] = rss_bytes()
    gpu = gpu_memory_bytes()
    if gpu is not None:
        record["vram_allocated_bytes"], record["vram_reserved_bytes"] = gpu
    if conversation:
        record["dropped_messages"] = done.dropped_messages  # messages outside the context
        if done.notice:
            record["notice"] = done.notice
    return record


class ReplySaver:
    """One assistant message of a saved conversation, written as its text arrives."""

    def __init__(
        self,
        store: ConversationStore,
        conv: int,
        interval: float = SAVE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        *,
        msg: int | None = None,
        text: str = "",
    ) -> None:
        """`msg` and `text`: a saved reply this one goes on with (a continue)."""
        self.store, self.conv = store, conv
        self.interval, self.clock = interval, clock
        self.msg: int | None = msg
        self.parts: list[str] = [text] if text else []
        self.last = clock()

    def token(self, text: str) -> None:
        """More text of the reply (a delta, possibly several tokens' worth)."""
        if not text:
            return
        self.parts.append(text)
        now = self.clock()
        if self.msg is None:
            self.msg, self.last = self.store.add_message(self.conv, "assistant", text), now
        elif now - self.last >= self.interval:
            self.store.update_message(self.msg, "".join(self.parts))
            self.last = now

    def stop(self) -> None:
        """The reply was cut short without a Done (the chat was closed or replaced)."""
        text = "".join(self.parts)
        if self.msg is None:
            self.msg = self.store.add_message(self.conv, "assistant", text)
        self.store.update_message(self.msg, text, stopped=True)

    def done(self, done: Done) -> None:
        metrics = reply_record(done)
        del metrics["text"], metrics["token_ids"]
        stopped = done.stop_reason in ("cancelled", "error")
        if self.msg is None:
            self.msg = self.store.add_message(self.conv, "assistant", done.text)
        self.store.update_message(self.msg, done.text, metrics, stopped)
