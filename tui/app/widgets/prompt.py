"""The prompt: Enter sends, Ctrl+J (or Alt+Enter) inserts a newline, Up/Down recall history."""

from __future__ import annotations

from textual import events
from textual.widgets import TextArea

from tui.app.messages import PromptSubmitted

NEWLINE_KEYS = ("ctrl+j", "alt+enter", "shift+enter")


class PromptInput(TextArea):
    BORDER_TITLE = "Prompt"
    BORDER_SUBTITLE = "enter send · ctrl+j newline · ↑ history"

    def __init__(self, *, cursor_blink: bool = True, id: str | None = None) -> None:
        super().__init__(
            "",
            id=id,
            soft_wrap=True,
            show_line_numbers=False,
            tab_behavior="focus",
            highlight_cursor_line=False,
        )
        self.cursor_blink = cursor_blink
        self.prompts: list[str] = []
        self._browse: int | None = None  # index into history while recalling
        self._draft = ""  # what was typed before recalling started

    def _set(self, text: str) -> None:
        self.text = text
        self.move_cursor(self.document.end)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text.strip("\n")
            if text.strip():
                if not self.prompts or self.prompts[-1] != text:
                    self.prompts.append(text)
                self._browse = None
                self.clear()
                self.post_message(PromptSubmitted(text))
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        if event.key == "up" and self.cursor_location[0] == 0 and self.prompts:
            event.stop()
            event.prevent_default()
            if self._browse is None:
                self._draft, self._browse = self.text, len(self.prompts)
            self._browse = max(0, self._browse - 1)
            self._set(self.prompts[self._browse])
            return
        last_row = self.document.line_count - 1
        if event.key == "down" and self._browse is not None and self.cursor_location[0] == last_row:
            event.stop()
            event.prevent_default()
            self._browse += 1
            if self._browse >= len(self.prompts):
                self._browse = None
                self._set(self._draft)
            else:
                self._set(self.prompts[self._browse])
            return
        await super()._on_key(event)
