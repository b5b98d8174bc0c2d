"""Asks for one piece of text (a new title, an edited message): Enter keeps it, Esc cancels."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label

from tui.app.messages import PromptSubmitted
from tui.app.widgets.prompt import PromptInput


class TextPromptScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, text: str = "", *, cursor_blink: bool = True) -> None:
        super().__init__()
        self.question = question
        self.initial = text
        self._cursor_blink = cursor_blink

    def compose(self) -> ComposeResult:
        with Vertical(id="text-prompt"):
            yield Label(Content(self.question), id="question")
            yield PromptInput(id="answer", cursor_blink=self._cursor_blink)

    def on_mount(self) -> None:
        answer = self.query_one(PromptInput)
        answer.border_title = "enter keeps it · esc cancels"
        answer.border_subtitle = "ctrl+j newline"
        answer.text = self.initial
        answer.move_cursor(answer.document.end)
        answer.focus()

    def on_prompt_submitted(self, event: PromptSubmitted) -> None:
        event.stop()
        self.dismiss(event.text)

    def action_cancel(self) -> None:
        self.dismiss(None)
