"""The conversation's engine updates drawn: each event goes to the controller first (what is
saved and kept), then to the reply on screen, the metrics and the notices.

The chat screen routes every update that is not a model load here, in submission order.
"""

from __future__ import annotations

import time

from textual.screen import Screen

from engine import Conversation, Done, Failed, MemoryStats, Pinned, TurnStarted
from tui.app.messages import EngineUpdate
from tui.app.stats import LiveStats
from tui.app.widgets.conversation import ConversationPane
from tui.app.widgets.prompt import PromptInput


class TurnView:
    def __init__(self, screen: Screen[None], controller: Conversation, stats: LiveStats) -> None:
        self.screen, self.controller, self.stats = screen, controller, stats

    @property
    def pane(self) -> ConversationPane:
        return self.screen.query_one(ConversationPane)

    async def take(self, update: EngineUpdate) -> None:
        if update.ticket_id in self.pane.replies:
            await self.on_reply_events(update)
            return
        for event in update.events:  # a pin, a ClearRequest, or a reply dropped by a new chat
            self.controller.feed(update.ticket_id, event)
            if isinstance(event, Pinned):
                self.mark_context()
            elif isinstance(event, Failed):
                self.screen.notify(event.message, severity="error", timeout=6)
            elif isinstance(event, MemoryStats):
                self.stats.on_memory(event)

    async def on_reply_events(self, update: EngineUpdate) -> None:
        for event in update.events:
            self.stats.take(event)
            turn = self.controller.feed(update.ticket_id, event)
            if turn is None:
                continue
            if isinstance(event, Done) and event.stop_reason == "error" and event.notice:
                self.screen.notify(event.notice, severity="error", timeout=8)  # server died
            if isinstance(event, TurnStarted) and event.notice:  # older turns trimmed, or a
                self.screen.notify(event.notice, severity="warning", timeout=8)  # message cut
            elif isinstance(event, Done) and event.context_start is not None:
                self.pane.place(turn.id, turn.user, turn.reply)
                self.mark_context()
            elif isinstance(event, Failed) and turn.kind == "continue":
                self.screen.notify(f"continue: {event.message}", severity="error", timeout=6)
            elif isinstance(event, Failed) and turn.kind != "regenerate":
                prompt = self.screen.query_one(PromptInput)  # nothing typed is lost: edit it
                prompt.text = prompt.text or turn.text  # and send it again
        await self.pane.draw(update.ticket_id, update.events, update.finished)
        done = next((e for e in update.events if isinstance(e, Done)), None)
        if done is not None and done.timings.done_at > 0:  # the engine's end -> on screen
            self.stats.on_render_lag(time.perf_counter() - done.timings.done_at)

    def mark_context(self) -> None:
        """Dim what trimming dropped, mark what is pinned, count the dropped in the metrics."""
        context = self.controller.context_start, set(self.controller.pinned)
        self.stats.on_dropped(*self.pane.mark_context(*context))
