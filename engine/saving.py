"""Saving chats as they happen, shared by `chat --plain` and the app (no Textual here).

A reply is written when its first token arrives, rewritten at least every SAVE_INTERVAL_S
while it streams, and once more with its metrics when it ends or is stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from engine.events import Done, Event, TokenEvent
from engine.metrics import gpu_memory_bytes, rss_bytes
from engine.session import ChatSession
from engine.store import ConversationStore

SAVE_INTERVAL_S = 1.0  # a streaming reply is written to disk at least this often
TITLE_CHARS = 60


def title_of(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


def reply_record(done: Done, session: ChatSession | None = None) -> dict[str, Any]:
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
        "context_tokens": m.context_used,  # tokens in context after the turn
        "computed_tokens": m.computed_tokens,  # prompt tokens run through the model this turn
    }
    if m.offload_bytes_per_token:  # weights streamed from CPU memory this reply
        record["offload_bytes_per_token"] = int(m.offload_bytes_per_token)
        record["offload_gb_s"] = round(m.offload_gb_s, 2)
        record["offload_wait_s"] = round(m.offload_wait_s, 4)
    record["rss_bytes"] = rss_bytes()
    gpu = gpu_memory_bytes()
    if gpu is not None:
        record["vram_allocated_bytes"], record["vram_reserved_bytes"] = gpu
    if session is not None:
        record["dropped_messages"] = session.dropped_messages  # messages outside the context
        if session.last_notice:
            record["notice"] = session.last_notice
    return record


class ReplySaver:
    """One assistant message of a saved conversation, written as its text arrives."""

    def __init__(
        self,
        store: ConversationStore,
        conv: int,
        interval: float = SAVE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.conv = store, conv
        self.interval, self.clock = interval, clock
        self.msg: int | None = None
        self.parts: list[str] = []
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

    def stop(self, text: str) -> None:
        """The reply was cut short without a Done (the chat was closed or replaced)."""
        if self.msg is None:
            self.msg = self.store.add_message(self.conv, "assistant", text)
        self.store.update_message(self.msg, text, stopped=True)

    def done(self, done: Done) -> None:
        metrics = reply_record(done)
        del metrics["text"], metrics["token_ids"]
        stopped = done.stop_reason == "cancelled"
        if self.msg is None:
            self.msg = self.store.add_message(self.conv, "assistant", done.text)
        self.store.update_message(self.msg, done.text, metrics, stopped)


def saved_events(
    events: Iterator[Event], store: ConversationStore, conv: int, interval: float = SAVE_INTERVAL_S
) -> Iterator[Event]:
    """Pass events through, saving the reply they stream."""
    saver = ReplySaver(store, conv, interval)
    for event in events:
        if isinstance(event, TokenEvent):
            saver.token(event.text)
        elif isinstance(event, Done):
            saver.done(event)
        yield event


class Recorder:
    """The saved copy of the app's conversation: which one it is, kept in step with the
    session (message i of the session is message seq i of the saved conversation)."""

    def __init__(self, store: ConversationStore | None, profile: dict[str, Any]) -> None:
        self.store = store  # None: --no-save
        self.profile = profile
        self.conv: int | None = None

    def user(self, text: str, at: int | None) -> ReplySaver | None:
        """Save a user message as message `at` (dropping any after it; None appends), and
        return the saver of its reply; a new conversation starts at the first message."""
        if self.store is None:
            return None
        if self.conv is None:
            self.conv = self.store.new_conversation(title_of(text), self.profile)
        elif at is not None:
            self.store.truncate(self.conv, at)
        self.store.add_message(self.conv, "user", text)
        return ReplySaver(self.store, self.conv)

    def reply(self, at: int) -> ReplySaver | None:
        """A saver for a reply that replaces message `at` and what followed (regenerate)."""
        if self.store is None or self.conv is None:
            return None
        self.store.truncate(self.conv, at)
        return ReplySaver(self.store, self.conv)

    def fork(self, at: int, text: str) -> ReplySaver | None:
        """The conversation forks at user message `at`: a new one keeps the messages before it
        and the edited text; the old one stays as it was."""
        if self.store is None:
            return None
        if self.conv is None:
            return self.user(text, at)
        self.conv = self.store.fork(self.conv, at)
        self.store.add_message(self.conv, "user", text)
        return ReplySaver(self.store, self.conv)

    def truncate(self, keep: int) -> None:
        """Forget what a failed turn saved: messages from `keep` on."""
        if self.store is not None and self.conv is not None:
            self.store.truncate(self.conv, keep)
