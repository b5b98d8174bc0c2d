"""The saved conversations: resume, rename, delete (after a confirmation), export, new; `/`
filters them live by full-text search over their messages, Enter opening one at the hit."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label

from engine import MARK, ConversationStore, UserError, title_of
from tui.app.screens.confirm import ConfirmScreen
from tui.app.screens.text_prompt import TextPromptScreen


@dataclass(frozen=True)
class ListChoice:
    action: Literal["resume", "new"]
    conv: int | None = None  # resume: which conversation
    at: int | None = None  # resume from a search hit: the message (seq) to show


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def branch(row: sqlite3.Row) -> str:
    return "" if row["parent_id"] is None else f"↳ fork of #{row['parent_id']}"


class ConversationsScreen(Screen[ListChoice | None]):
    """Opened with ctrl+o; dismissed with what the chat screen should do next, if anything."""

    BINDINGS = [
        Binding("enter", "resume", "Resume", priority=True),
        Binding("n", "new", "New"),
        Binding("r", "rename", "Rename"),
        Binding("d", "delete", "Delete"),
        Binding("m", "export('md')", "Export .md"),
        Binding("j", "export('json')", "Export .json"),
        Binding("slash", "filter", "Search"),
        Binding("escape", "close", "Back"),
    ]

    def __init__(
        self,
        store: ConversationStore,
        current: int | None,
        data_dir: Path,
        *,
        cursor_blink: bool = True,
    ) -> None:
        super().__init__()
        self.store = store
        self.current = current  # the conversation on the chat screen, if saved
        self.data_dir = data_dir  # exports go here when the current directory is not writable
        self._cursor_blink = cursor_blink

    def compose(self) -> ComposeResult:
        with Vertical(id="conversations"):
            search = Input(placeholder="search every message: words, as you type", id="filter")
            search.display = False
            yield search
            yield DataTable(id="conversation-list", cursor_type="row", zebra_stripes=True)
            yield Label("", id="list-status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.border_title = "Conversations"
        self.reload()
        table.focus()

    @property
    def table(self) -> DataTable[object]:
        return self.query_one(DataTable)

    def reload(self, keep: int | None = None) -> None:
        """Fill the table, newest first; the cursor stays on `keep` when it is still there."""
        table = self.table
        keep = self.selected() if keep is None else keep
        if self.query_one("#filter", Input).value.strip():
            self.show_hits(self.query_one("#filter", Input).value)
            return
        table.clear(columns=True)
        table.add_columns("#", "title", "updated", "msgs", "branch")
        for row in self.store.list_conversations():
            mark = "●" if row["id"] == self.current else " "
            table.add_row(
                f"{mark}{row['id']}",
                Text(row["title"]),  # as typed: no markup
                when(row["updated"]),
                str(row["message_count"]),
                branch(row),
                key=str(row["id"]),
            )
        if not table.row_count:
            self.status("no saved conversations yet: n starts one, esc goes back")
        elif keep is not None and str(keep) in table.rows:
            table.move_cursor(row=table.get_row_index(str(keep)))

    def show_hits(self, query: str) -> None:
        """The messages matching `query` (words, the last one as a prefix while typing), best
        first: one row each, keyed "conv:seq"."""
        table = self.table
        table.clear(columns=True)
        table.add_columns("#", "title", "msg", "match")
        try:
            hits = self.store.search(query, prefix=True)
        except UserError as exc:
            self.status(str(exc), error=True)
            return
        start, end = MARK
        for hit in hits:
            marked = Text()  # each match reversed
            for n, piece in enumerate(" ".join(hit["snippet"].split()).split(start)):
                word, _, rest = piece.partition(end) if n else ("", "", piece)
                marked.append(word, style="bold reverse")
                marked.append(rest)
            table.add_row(
                str(hit["conversation_id"]),
                Text(hit["title"]),
                f"{hit['seq'] + 1} {hit['role']}",
                marked,
                key=f"{hit['conversation_id']}:{hit['seq']}",
            )
        found = f"{len(hits)} matching messages" if hits else "no message matches"
        self.status(f"{found} for '{query.strip()}': enter opens the chat there, esc clears")

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            event.stop()
            if event.value.strip():
                self.show_hits(event.value)
            else:
                self.reload()
                self.status("")

    def action_filter(self) -> None:
        search = self.query_one("#filter", Input)
        search.display = True
        search.focus()

    def selected_key(self) -> tuple[int, int | None] | None:
        """The row under the cursor: its conversation, and the message of a search hit."""
        table = self.table
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        if key.value is None:
            return None
        conv, _, seq = key.value.partition(":")
        return int(conv), int(seq) if seq else None

    def selected(self) -> int | None:
        picked = self.selected_key()
        return None if picked is None else picked[0]

    def status(self, text: str, error: bool = False) -> None:
        label = self.query_one("#list-status", Label)
        label.update(Content(text))
        label.set_class(error, "-error")

    def _pick(self, verb: str) -> int | None:
        conv = self.selected()
        if conv is None:
            self.status(f"{verb}: there is no conversation to {verb}", error=True)
        return conv

    def action_resume(self) -> None:
        conv = self._pick("resume")
        if conv is not None:
            picked = self.selected_key()
            self.dismiss(ListChoice("resume", conv, picked[1] if picked else None))

    def action_new(self) -> None:
        self.dismiss(ListChoice("new"))

    def action_close(self) -> None:
        search = self.query_one("#filter", Input)
        if search.display:  # esc first clears the search, then goes back
            search.value, search.display = "", False
            self.reload()
            self.status("")
            self.table.focus()
            return
        self.dismiss(None)

    def action_rename(self) -> None:
        conv = self._pick("rename")
        if conv is None:
            return
        title = self.store.get(conv)["title"]

        def renamed(text: str | None) -> None:
            if text is None or not text.strip():
                self.status("rename cancelled")
                return
            new = title_of(text)
            self._guard(lambda: self.store.rename(conv, new), f"#{conv} renamed to '{new}'")
            self.reload(conv)

        question = f"New title for conversation #{conv}:"
        self.app.push_screen(
            TextPromptScreen(question, title, cursor_blink=self._cursor_blink), renamed
        )

    def action_delete(self) -> None:
        conv = self._pick("delete")
        if conv is None:
            return
        row = self.store.get(conv)

        def answered(yes: bool | None) -> None:
            if not yes:
                self.status(f"#{conv} kept")
                return
            self._guard(lambda: self.store.delete(conv), f"#{conv} deleted")
            if conv == self.current:
                self.current = None
            self.reload()

        count = len(self.store.messages(conv))
        question = f"Delete conversation #{conv} '{row['title']}' ({count} messages)?"
        self.app.push_screen(ConfirmScreen(question, "Delete"), answered)

    def action_export(self, fmt: str) -> None:
        conv = self._pick("export")
        if conv is None:
            return
        try:
            if fmt == "json":
                text = json.dumps(self.store.export_json(conv), ensure_ascii=False, indent=2)
            else:
                text = self.store.export_markdown(conv)
            path = self.export(conv, fmt, text + ("\n" if fmt == "json" else ""))
        except (UserError, OSError) as exc:
            self.status(f"export failed: {exc}", error=True)
            return
        self.status(f"#{conv} exported to {path}")
        self.notify(f"exported to {path}", timeout=4)

    def export(self, conv: int, fmt: str, text: str) -> Path:
        """Write into the current directory, else the data dir; returns the path written."""
        name = f"llama-tui-conversation-{conv}.{fmt}"
        try:
            path = Path.cwd() / name
            path.write_text(text, encoding="utf-8")
        except OSError:
            path = self.data_dir / name
            path.write_text(text, encoding="utf-8")
        return path.resolve()

    def _guard(self, change: Callable[[], None], done: str) -> None:
        try:
            change()
        except UserError as exc:
            self.status(str(exc), error=True)
            return
        self.status(done)
