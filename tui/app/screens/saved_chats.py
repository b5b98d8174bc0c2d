"""Conversations from the chat screen: a new one, the saved list (Ctrl+O), resuming one, and the
chat on screen deleted from the list. What is saved, and where, is the controller's business."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.screen import Screen

from engine import Conversation, ConversationStore, UserError, data_dir, open_store
from tui.app.screens.conversations import ConversationsScreen, ListChoice
from tui.app.stats import LiveStats
from tui.app.widgets.conversation import ConversationPane
from tui.app.widgets.prompt import PromptInput


class SavedChats:
    def __init__(
        self,
        screen: Screen[None],
        controller: Conversation,
        stats: LiveStats,
        *,
        data_dir: Path | None,
        cursor_blink: bool,
        resume_persona: Callable[[str | None], None],
    ) -> None:
        self.screen, self.controller, self.stats = screen, controller, stats
        self.resume_persona = resume_persona  # a resumed chat's persona, taken up again
        self.data_dir = data_dir  # --data-dir (None: $LLAMA_TUI_DATA_DIR, else the user's)
        self.cursor_blink = cursor_blink
        self._browse: ConversationStore | None = None  # the list's own, when this chat is not saved

    @property
    def pane(self) -> ConversationPane:
        return self.screen.query_one(ConversationPane)

    async def start_new(self) -> None:
        """Stop everything and start an empty conversation (the old one stays saved)."""
        self.controller.restart()
        await self._cleared()
        self.pane.add_notice("new conversation")

    async def _cleared(self) -> None:
        self.stats.on_stopped()
        self.stats.on_dropped(0, 0)
        await self.pane.clear_messages()

    def store(self) -> ConversationStore | None:
        """The store the list shows: the one this chat saves to, else (--no-save, or saving
        stopped) one opened for browsing."""
        if self.controller.store is not None:
            return self.controller.store
        if self._browse is None:
            try:  # --no-save: the list still opens, this chat is just not written
                self._browse = open_store(self.data_dir)
            except UserError as exc:
                self.screen.notify(str(exc), severity="error", timeout=6)
        return self._browse

    def open_list(self) -> None:
        store = self.store()
        if store is not None:
            where, blink = data_dir(self.data_dir), self.cursor_blink
            chooser = ConversationsScreen(store, self.controller.conv, where, cursor_blink=blink)
            self.screen.app.push_screen(chooser, self.on_choice)

    async def on_choice(self, choice: ListChoice | None) -> None:
        store, conv = self.controller.store, self.controller.conv
        if store is not None and conv is not None and not store.exists(conv):
            await self.start_new()  # the chat on screen was deleted from the list
            self.screen.notify(f"conversation #{conv} was deleted: this is a new one", timeout=4)
        if choice is not None and choice.action == "new":
            await self.start_new()
        elif choice is not None and choice.conv is not None:
            await self.resume(choice.conv, choice.at)

    async def resume(self, conv: int, at: int | None = None) -> None:
        """Go on with a saved conversation: its messages on screen and in the session (the
        first turn rebuilds their K/V, reusing whatever prefix the cache still holds); `at`:
        the message to scroll to (a search hit)."""
        store = self.store()
        if store is None:
            return
        try:
            title, messages = self.controller.resume(store, conv)
        except UserError as exc:
            self.screen.notify(str(exc), severity="error", timeout=6)
            return
        await self._cleared()
        await self.pane.add_history(messages)
        self.resume_persona(self.controller.persona)
        saved = "" if store is self.controller.store else " (--no-save: new turns are not saved)"
        self.pane.add_notice(f"resumed #{conv} '{title}', {len(messages)} messages{saved}")
        self.screen.query_one(PromptInput).focus()
        if at is not None:  # opened from a search hit: that message in view
            self.pane.show_message(at)
