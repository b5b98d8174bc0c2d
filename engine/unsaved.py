"""The chat controller's copy of the saved conversation, for when the store cannot be written.

``Mirror`` follows every turn's events the way the store would (message i = seq i): it is
what the saved conversation should hold. When a write fails (disk full, a store made read-only)
the controller keeps chatting; ``catch_up`` later writes what the store missed, from the first
message it may not hold in full, and ``export`` writes it all to a JSON file (the shape of
``llama-tui history export --format json``) when the store never came back.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.attachments import Attachment
from engine.chat_format import Message
from engine.events import Done, Failed, TokenEvent, TurnStarted
from engine.saving import reply_record, title_of
from engine.store import ConversationStore

EXPORT_PREFIX = "unsaved-conversation"


@dataclass
class Entry:
    role: str
    content: str
    stopped: bool = False
    metrics: dict[str, Any] | None = None
    final: bool = True  # False while its reply streams
    attachments: tuple[Attachment, ...] = ()  # files sent inside a user message


@dataclass
class Mirror:
    entries: list[Entry] = field(default_factory=list)
    title: str = ""

    def reset(
        self, messages: list[Message], attached: Sequence[tuple[Attachment, ...]] = ()
    ) -> None:
        """Start from `messages` (a resumed chat), `attached[i]`: the files of message i."""
        files = list(attached) + [()] * (len(messages) - len(attached))
        self.entries = [
            Entry(m.role, m.content, attachments=f) for m, f in zip(messages, files, strict=True)
        ]
        self.title = title_of(messages[0].content) if messages else ""

    def follow(
        self,
        kind: str,
        text: str,
        user: int | None,
        reply: int | None,
        event: object,
        attachments: tuple[Attachment, ...] = (),
    ) -> None:
        """One event of a turn (`user`, `reply`: where TurnStarted put its messages)."""
        if isinstance(event, TurnStarted):
            if kind == "regenerate":
                del self.entries[reply if reply is not None else len(self.entries) :]
            else:
                self.user(user, text, attachments)
        elif isinstance(event, TokenEvent) and event.text:
            last = self.entries[-1] if self.entries else None
            if last is not None and last.role == "assistant" and not last.final:
                last.content += event.text
            else:
                self.entries.append(Entry("assistant", event.text, final=False))
        elif isinstance(event, Done):
            metrics = reply_record(event)
            del metrics["text"], metrics["token_ids"]
            stopped = event.stop_reason in ("cancelled", "error")
            entry = Entry("assistant", event.text, stopped, metrics)
            last = self.entries[-1] if self.entries else None
            if last is not None and last.role == "assistant" and not last.final:
                self.entries[-1] = entry
            else:
                self.entries.append(entry)
        elif isinstance(event, Failed):
            keep = event.kept if event.kept is not None else user
            if keep is not None:
                del self.entries[keep:]

    def user(self, index: int | None, text: str, attachments: tuple[Attachment, ...] = ()) -> None:
        """A turn's user message, where the engine put it (what came after it is dropped)."""
        if index is not None:
            del self.entries[index:]
        self.entries.append(Entry("user", text, attachments=attachments))
        if len(self.entries) == 1:
            self.title = title_of(text)

    def stop(self) -> None:
        """A reply cut short without a Done: what streamed stays, marked stopped."""
        last = self.entries[-1] if self.entries else None
        if last is not None and not last.final:
            last.final, last.stopped = True, True

    def catch_up(
        self,
        store: ConversationStore,
        conv: int | None,
        keep: int,
        profile: dict[str, Any],
        persona: str | None = None,
    ) -> tuple[int, int | None]:
        """Write entries[keep:] (with their files) over what `conv` holds from seq `keep` on
        (a new conversation, with `persona`, when `conv` is None). Returns the conversation and
        the id of a reply still streaming."""
        if conv is None:
            title = self.title or "(untitled)"
            conv, keep = store.new_conversation(title, profile, persona), 0
        else:
            store.truncate(conv, keep)
        streaming = None
        for entry in self.entries[keep:]:
            msg = store.add_message(conv, entry.role, entry.content, entry.metrics)
            for a in entry.attachments:
                store.add_attachment(msg, a.path, a.size, a.sha256, a.tokens, a.text)
            if entry.stopped:
                store.update_message(msg, entry.content, stopped=True)
            if not entry.final:
                streaming = msg
        return conv, streaming

    def export(
        self, folders: list[Path], profile: dict[str, Any], persona: str | None = None
    ) -> Path | None:
        """The whole conversation as JSON in the first folder that takes it; None if none did."""
        now = time.time()
        doc = {
            "title": self.title,
            "created": now,
            "persona": persona,
            "profile": profile,
            "messages": [_exported(e) for e in self.entries],
        }
        text = json.dumps(doc, ensure_ascii=False, indent=2, default=str) + "\n"
        name = f"{EXPORT_PREFIX}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        for folder in [*folders, Path(tempfile.gettempdir())]:
            path = folder / name
            try:
                path.write_text(text, encoding="utf-8")
                return path
            except OSError:
                try:
                    path.unlink(missing_ok=True)  # a partial file: nothing half-written stays
                except OSError:
                    pass
        return None


def _exported(entry: Entry) -> dict[str, Any]:
    """One message as `history export --format json` writes it (history import reads it)."""
    out: dict[str, Any] = {
        "role": entry.role,
        "content": entry.content,
        "stopped": entry.stopped or not entry.final,
        "metrics": entry.metrics,
    }
    if entry.attachments:
        out["attachments"] = [a.record() for a in entry.attachments]
    return out
