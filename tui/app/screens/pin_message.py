"""Pick a message to pin (trimming never drops it) or to unpin."""

from __future__ import annotations

from tui.app.screens.edit_message import MessagePicker, preview
from tui.app.widgets.message import PINNED_MARK


class PinMessageScreen(MessagePicker[int | None]):
    """Dismissed with the index of the message to pin or unpin, or None."""

    QUESTION = "Pin or unpin which message? Trimming keeps a pinned message in context."

    def __init__(
        self, messages: list[tuple[int, str]], pinned: set[int], *, cursor_blink: bool = True
    ) -> None:
        super().__init__(messages, cursor_blink=cursor_blink)
        self.pinned = pinned

    def label(self, n: int, index: int, text: str) -> str:
        mark = f"[{PINNED_MARK}] " if index in self.pinned else ""
        return f"{index + 1}. {mark}{preview(text)}"

    def picked(self, index: int) -> None:
        self.dismiss(index)
