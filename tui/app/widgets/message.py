"""The blocks of the conversation: a user message, an assistant reply, a notice."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import Collapsible, Label, Markdown, ProgressBar, Static
from textual.widgets.markdown import MarkdownStream

from engine import (
    Attachment,
    Done,
    Failed,
    PrefillDone,
    QueueEvent,
    Started,
    TokenEvent,
    reply_record,
)

STOP_LABELS = {
    "stop": "",
    "length": "reached max_new_tokens",
    "context": "stopped: context full",
    "cancelled": "stopped",
    "error": "stopped: the server failed",
}


DROPPED_MARK = "out of context"  # shown on messages the model no longer sees
PINNED_MARK = "pinned"  # shown on messages trimming keeps in context
FILE_LINES = 200  # an attached file opened on screen shows this many lines at most


class UserMessage(Static):
    """What the user typed, shown verbatim (no markup); the files sent with it follow it as
    FileBlocks."""

    def __init__(self, text: str, attachments: tuple[Attachment, ...] = ()) -> None:
        super().__init__(Content(text))
        self.text = text
        self.attachments = attachments
        self.index: int | None = None  # its place in the session's messages, once answered
        self.dropped = False
        self.pinned = False

    def set_context(self, dropped: bool, pinned: bool) -> None:
        """Dim it, with a marker, when trimming has taken it out of the model's context; mark
        it when it is pinned (trimming keeps it)."""
        if (dropped, pinned) == (self.dropped, self.pinned):
            return
        self.dropped, self.pinned = dropped, pinned
        self.set_class(dropped, "-dropped")
        self.set_class(pinned, "-pinned")
        mark = PINNED_MARK if pinned else DROPPED_MARK if dropped else None
        text = Content(self.text)
        self.update(Content.styled(f"[{mark}] ", "italic") + text if mark else text)


class AssistantMessage(Vertical):
    """A reply streamed as Markdown, with a status line: pending, streaming, stopped, failed."""

    def __init__(self, status: str = "pending") -> None:
        super().__init__()
        self.text = ""
        self.status = status
        self.index: int | None = None  # its place in the session's messages, once finished
        self.dropped = False
        self.pinned = False
        self.record: dict[str, Any] | None = None  # its figures (the reply details), once done
        self._stream: MarkdownStream | None = None
        self.role = Label(self._header(), classes="role")
        self.body = Markdown("", classes="reply")

    def compose(self) -> ComposeResult:
        yield self.role
        yield self.body

    def _header(self) -> Content:
        label = Content.styled("assistant", "bold")
        if self.status:
            label += Content(f" · {self.status}")
        mark = PINNED_MARK if self.pinned else DROPPED_MARK if self.dropped else None
        if mark:
            label += Content.styled(f" [{mark}]", "italic")
        return label

    def set_context(self, dropped: bool, pinned: bool) -> None:
        """Dim it, with a marker, when trimming has taken it out of the model's context; mark
        it when it is pinned (trimming keeps it)."""
        if (dropped, pinned) != (self.dropped, self.pinned):
            self.dropped, self.pinned = dropped, pinned
            self.set_class(dropped, "-dropped")
            self.set_class(pinned, "-pinned")
            self.role.update(self._header())

    def set_status(self, status: str, kind: str = "") -> None:
        self.status = status
        self.set_class(kind == "stopped", "-stopped")
        self.set_class(kind == "failed", "-failed")
        self.set_class(kind == "pending", "-pending")
        self.role.update(self._header())

    async def take(self, events: list[QueueEvent]) -> None:
        """Draw a batch of the reply's events: its text (one write per run of tokens) and its
        status (prefill, streaming, how it ended)."""
        chunk: list[str] = []
        for event in events:
            if isinstance(event, TokenEvent):
                chunk.append(event.text)
                continue
            await self.append("".join(chunk))
            chunk.clear()
            if isinstance(event, Started):
                self.set_status("prefill…")
            elif isinstance(event, PrefillDone):
                self.set_status("streaming")
            elif isinstance(event, Done):
                self.record = reply_record(event)
                await self.finish(event.stop_reason)
            elif isinstance(event, Failed):
                await self.fail(event.message)
        await self.append("".join(chunk))

    async def append(self, text: str) -> None:
        if not text:
            return
        if self._stream is None:
            self._stream = Markdown.get_stream(self.body)
        self.text += text
        await self._stream.write(text)

    async def finish(self, stop_reason: str) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if stop_reason == "cancelled" and not self.text:
            self.set_status("stopped before the first token", "stopped")
        else:
            kind = "stopped" if stop_reason in ("cancelled", "context", "error") else ""
            self.set_status(STOP_LABELS.get(stop_reason, stop_reason), kind)

    async def show(self, text: str, stopped: bool, record: dict[str, Any] | None = None) -> None:
        """A finished reply from a saved conversation, shown whole (`record`: its saved figures)."""
        self.text, self.record = text, record
        await self.body.update(text)
        self.set_status("stopped" if stopped else "", "stopped" if stopped else "")

    async def fail(self, message: str) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.set_status(f"failed: {message}", "failed")


class FileBlock(Collapsible):
    """A file sent inside the user message above it: collapsed to its name, size and token
    count; opened, its text (the first FILE_LINES lines)."""

    def __init__(self, attachment: Attachment) -> None:
        lines = attachment.text.splitlines()
        shown = "\n".join(lines[:FILE_LINES])
        if len(lines) > FILE_LINES:
            shown += f"\n… {len(lines) - FILE_LINES:,} more lines (all of them were sent)"
        super().__init__(
            Static(Content(shown), classes="file-text"),
            title=f"file {attachment.describe()}",
            collapsed=True,
        )
        self.attachment = attachment


class Notice(Static):
    """A one-line note from the app (model loaded, config reloaded, an error)."""

    def __init__(self, text: str, kind: str = "info") -> None:
        super().__init__(Content(text), classes=f"-{kind}")


class LoadBar(Vertical):
    """Model-load progress, shown in the conversation while a profile's weights load."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.bar = ProgressBar(total=None, show_eta=False)

    def compose(self) -> ComposeResult:
        yield Label(Content(self.label))
        yield self.bar

    def progress(self, done: int, total: int) -> None:
        self.bar.update(total=total, progress=done)
