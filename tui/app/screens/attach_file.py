"""Asks for the path of a file to attach (Ctrl+T), completing folder and file names as they are
typed: Tab takes the highlighted name, Enter attaches the highlighted file (or opens the
highlighted folder), Esc cancels."""

from __future__ import annotations

import os
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, Label
from textual_autocomplete import DropdownItem, PathAutoComplete, TargetState

QUESTION = "Attach a text file to your next message\ntab completes · enter attaches · esc cancels"


class HomePathAutoComplete(PathAutoComplete):
    """Completes `~/…` from the home folder as well as relative and absolute paths."""

    def get_candidates(self, target_state: TargetState) -> list[DropdownItem]:
        text = target_state.text
        if not text.startswith("~"):
            return super().get_candidates(target_state)
        expanded = os.path.expanduser(text[: target_state.cursor_position])
        return super().get_candidates(TargetState(expanded, len(expanded)))


class AttachFileScreen(ModalScreen[str | None]):
    """Dismissed with the path typed (None: cancelled); the chat screen reads the file."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, folder: Path | None = None) -> None:
        super().__init__()
        self.folder = folder or Path.cwd()  # where relative paths start

    def compose(self) -> ComposeResult:
        with Vertical(id="attach-file"):
            yield Label(Content(QUESTION), id="question")
            yield Input(placeholder=f"{self.folder}/…", id="path", compact=True)
        yield HomePathAutoComplete(
            "#path",
            self.folder,
            folder_prefix=Content("▸ "),
            file_prefix=Content("  "),
            prevent_default_enter=False,  # Enter on a file: completed, then attached
            id="path-completion",
        )

    def on_mount(self) -> None:
        self.query_one("#path", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        path = event.value.strip()
        if not path:
            return
        full = Path(path).expanduser()
        full = full if full.is_absolute() else self.folder / full
        if not full.is_dir():  # a folder stays open for its files; the rest the chat reads
            self.dismiss(str(full))

    def action_cancel(self) -> None:
        self.dismiss(None)
