"""Pick one of the conversation's messages; edit one of the user's: the chat forks from there."""

from __future__ import annotations

from typing import TypeVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from tui.app.screens.text_prompt import TextPromptScreen

PREVIEW_CHARS = 70
R = TypeVar("R")


def preview(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= PREVIEW_CHARS else line[: PREVIEW_CHARS - 1] + "…"


class MessagePicker(ModalScreen[R]):
    """A list of messages, the latest highlighted: Enter calls `picked`, Esc dismisses None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    QUESTION = ""

    def __init__(self, messages: list[tuple[int, str]], *, cursor_blink: bool = True) -> None:
        super().__init__()
        self.messages = dict(messages)  # index in the conversation -> text, oldest first
        self._cursor_blink = cursor_blink

    def label(self, n: int, index: int, text: str) -> str:
        return f"{n}. {preview(text)}"

    def compose(self) -> ComposeResult:
        with Vertical(id="pick-message"):
            yield Label(Content(self.QUESTION), id="question")
            yield OptionList(
                *(
                    Option(Content(self.label(n, index, text)), id=str(index))
                    for n, (index, text) in enumerate(self.messages.items(), 1)
                ),
                id="messages",
            )

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = options.option_count - 1  # the latest first: the usual choice
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        assert event.option.id is not None
        self.picked(int(event.option.id))

    def picked(self, index: int) -> None:
        raise NotImplementedError

    def action_cancel(self) -> None:
        self.dismiss(None)  # type: ignore[arg-type]


class EditMessageScreen(MessagePicker[tuple[int, str] | None]):
    """Dismissed with (index in the session's messages, new text), or None."""

    QUESTION = "Edit which message? The chat forks there: the saved original stays as it was."

    def picked(self, index: int) -> None:
        def edited(text: str | None) -> None:
            if text is None:
                return  # back to the list
            self.dismiss((index, text))

        screen = TextPromptScreen(
            f"Edit message {index + 1}:", self.messages[index], cursor_blink=self._cursor_blink
        )
        self.app.push_screen(screen, edited)
