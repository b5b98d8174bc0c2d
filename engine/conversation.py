"""The chat controller: one conversation's turns over the engine queue, saved as they happen.

No Textual here. The app (tui/app) and line mode (tui/cli/plain.py) drive the same object, so
what is sent, what is saved when, and what a failed, stopped, edited or regenerated turn leaves
behind are the same in both. A front end submits through it, hands it every event of its
tickets in order (``feed``), and renders the events itself.

Saving: message i of the engine's conversation is message seq i of the saved one. A user message
is written when the engine takes its turn (``TurnStarted`` says where it went), its reply when
the first token arrives, at least every SAVE_INTERVAL_S while it streams, and once more with its
metrics when it ends or is stopped. A turn that fails leaves nothing saved; an edit forks the
saved conversation there.

A store write that fails (disk full, the file made read-only, another process holding it past
the retries) does not stop the chat: one line says so, the conversation goes on in memory
(engine/unsaved.py keeps what the store should hold) and what the store missed is written as
soon as a write works again, tried at most every RETRY_S; ``close`` exports it to a JSON file
beside the store (else in the temp folder) when the store never came back.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from engine.attachments import Attachment, read_attachment, typed_part, with_attachments
from engine.backend import GenerationRequest, RequestKind, TokenizeRequest
from engine.chat_format import Message
from engine.config import Profile
from engine.errors import UserError
from engine.events import Done, Failed, Pinned, TokenEvent, Tokens, TurnStarted
from engine.history import prompt_budget
from engine.queue import (
    ClearRequest,
    EngineQueue,
    LoadRequest,
    PinRequest,
    QueueEvent,
    Request,
    Ticket,
)
from engine.saving import ReplySaver, title_of
from engine.store import ConversationStore
from engine.unsaved import Mirror

RETRY_S = 1.0  # while the store cannot be written, a write is tried again at most this often
Notify = Callable[[str, str], None]  # (one line for the user, "info" | "error")


class SavedMessage(NamedTuple):
    role: str
    text: str  # a user message with files: what the user typed
    stopped: bool
    attachments: tuple[Attachment, ...] = ()  # the files sent with it
    metrics: dict[str, Any] | None = None  # a reply's saved figures (engine.reply_record's)


@dataclass
class Turn:
    """A request that adds to the conversation, from submission to its Done or Failed."""

    ticket: Ticket
    kind: RequestKind
    text: str  # what the user sent (edit: the new text; regenerate: "")
    user: int | None = None  # once it runs, a chat turn's user message index in the conversation
    reply: int | None = None  # and its reply's
    saver: ReplySaver | None = None  # the reply's saved copy, once it runs
    attachments: tuple[Attachment, ...] = ()  # files sent inside the user message (text has them)
    typed: str = ""  # with attachments: what the user typed (text without the files)

    @property
    def id(self) -> int:
        return self.ticket.id


class Conversation:
    def __init__(
        self,
        queue: EngineQueue,
        store: ConversationStore | None = None,
        *,
        submit: Callable[[Request], Ticket] | None = None,
        notify: Notify | None = None,
        profile: Profile | None = None,
    ) -> None:
        self.queue = queue
        self._submit = submit or queue.submit  # the app's submit routes events to its screen
        self.store = store  # None: not saved (--no-save, or a store write failed)
        self.notify: Notify = notify or (lambda text, kind: None)
        self.profile = profile  # what new requests use (read per request)
        self.conv: int | None = None  # the saved copy, from the first turn that ran
        self.turns: dict[int, Turn] = {}  # ticket id -> a turn that has not ended
        self.length = 0  # messages in the engine's conversation, as its events last said
        self.context_start = 0  # messages[:context_start] left the context, except pinned
        self.pinned: tuple[int, ...] = ()
        self.mirror = Mirror()  # what the saved conversation should hold (engine/unsaved.py)
        self.unsaved_from: int | None = None  # a write failed: the store may miss messages[i:]
        self._retry_at = 0.0
        self.attachments: list[Attachment] = []  # files for the next user message
        self.context_used = 0  # tokens in context after the last reply (0: none yet)
        self.persona: str | None = None  # the [prompts.NAME] in use; saved with a new chat

    @property
    def busy(self) -> bool:
        return bool(self.turns)

    # Requests ------------------------------------------------------------------------------

    def send(self, text: str) -> Turn:
        """A user turn (with the files attached since the last one, before its text); a raw
        completion when the profile has no chat template."""
        files, self.attachments = tuple(self.attachments), []
        kind: RequestKind = "chat" if self._active().chat_template else "complete"
        turn = self._turn(kind, with_attachments(text, files) if files else text)
        turn.attachments, turn.typed = files, text if files else ""
        return turn

    def continue_reply(self) -> Turn:
        """Extend the last reply where it stopped (on length, or stopped by the user); the
        engine's cache still holds it, so nothing is prefilled again."""
        return self._turn("continue", "")

    def attach(self, path: Path) -> Attachment:
        """Read a text file for the next user message and count its tokens with the active
        model; UserError (one line) for a missing, unreadable or binary file, or one larger
        than what the context has left. Blocks until the engine has counted: call it from a
        plain thread (line mode, an app worker thread), never from an event loop."""
        file = read_attachment(path)
        tokens = self._count(file.wrapped)
        p = self._active()
        ctx = tokens.context_length
        budget = prompt_budget(ctx, p.max_new_tokens)
        used = self.context_used + sum(a.tokens for a in self.attachments)
        left = max(budget - used, 0)
        if tokens.n > left:
            raise UserError(
                f"{file.name} needs {tokens.n:,} tokens but the context has {left:,} left "
                f"(a {budget:,}-token prompt budget of context_length {ctx:,}, {used:,} in use): "
                "attach a part of it, start a new chat or raise context_length"
            )
        file = file.counted(tokens.n)
        self.attachments.append(file)
        return file

    def set_persona(self, name: str | None) -> None:
        """The persona new turns use (the caller loads its profile); the saved chat records it."""
        self.persona = name
        with self._saving() as store:
            if store is not None and self.conv is not None:
                store.set_persona(self.conv, name)

    def _count(self, text: str) -> Tokens:
        for event in self.queue.submit(TokenizeRequest(text=text)):
            if isinstance(event, Tokens):
                return event
            if isinstance(event, Failed):
                raise UserError(event.message)
        raise UserError("the engine stopped before counting the file's tokens")

    def regenerate(self) -> Turn:
        """Answer the last user message again; its old reply is dropped."""
        return self._turn("regenerate", "")

    def edit(self, index: int, text: str) -> Turn:
        """Replace user message `index`, drop what followed and answer it (the saved copy forks
        there; the original stays as it was)."""
        return self._turn("edit", text, index)

    def load(self, profile: Profile) -> Ticket:
        """Load `profile`'s model in order with the turns (weights only when they changed); the
        ticket ends with ModelReady or Failed. Which profile new requests use is `profile`."""
        return self._submit(LoadRequest(profile))

    def pin(self, index: int, pinned: bool = True) -> Ticket:
        """Keep message `index` in context whatever trimming drops, or let it go; the ticket
        ends with Pinned (or Failed for a message the conversation does not hold)."""
        return self._submit(PinRequest(index, pinned))

    def restart(
        self,
        messages: Sequence[Message] = (),
        attached: Sequence[tuple[Attachment, ...]] = (),
    ) -> Ticket:
        """Stop everything and start over: empty, or with a saved conversation's messages
        (`attached[i]`: the files inside message i). A reply cut short here is saved as
        stopped."""
        self.queue.cancel_all()
        self._stop_replies()
        self._settle()
        self.turns.clear()
        self.conv = None
        self.length, self.context_start, self.pinned = len(messages), 0, ()
        self.mirror.reset(list(messages), attached)
        self.unsaved_from = None
        self.context_used = 0
        return self._submit(ClearRequest(tuple(messages)))

    def resume(self, store: ConversationStore, conv: int) -> tuple[str, list[SavedMessage]]:
        """Go on with saved conversation `conv` (UserError if it cannot be read): its title and
        messages. New turns are saved there when `store` is the one this chat saves to; the
        persona it used is `persona` again (the caller loads its profile)."""
        saved = store.get(conv)
        rows = store.messages(conv)
        files = [store.attached(r["id"]) for r in rows]
        self.restart([Message(r["role"], r["content"]) for r in rows], files)
        self.persona = saved["persona"]
        if store is self.store:
            self.conv = conv
        return str(saved["title"]), [
            SavedMessage(
                r["role"],
                typed_part(r["content"], f),
                bool(r["stopped"]),
                f,
                json.loads(r["metrics_json"]) if r["metrics_json"] else None,
            )
            for r, f in zip(rows, files, strict=True)
        ]

    def _active(self) -> Profile:
        if self.profile is None:
            raise RuntimeError("the conversation has no profile yet")
        return self.profile

    def _turn(self, kind: RequestKind, text: str, index: int = -1) -> Turn:
        p = self._active()
        ticket = self._submit(GenerationRequest(kind, text, p.sampling, p.max_new_tokens, index))
        turn = self.turns[ticket.id] = Turn(ticket, kind, text)
        return turn

    # Events --------------------------------------------------------------------------------

    def feed(self, ticket_id: int, event: QueueEvent) -> Turn | None:
        """Take one event of a ticket (in order): follow the conversation, save what it says.
        Returns the turn it belongs to, if any; a turn ends with its Done or Failed."""
        if isinstance(event, Pinned):
            self.context_start, self.pinned = event.context_start, event.pinned
        turn = self.turns.get(ticket_id)
        if turn is None:
            return None
        self._follow(turn, event)
        self.mirror.follow(turn.kind, turn.text, turn.user, turn.reply, event, turn.attachments)
        with self._saving() as store:
            if store is not None and self.unsaved_from is None:
                self._record(store, turn, event)
            elif store is not None:
                self._catch_up(store, turn, event)
        if isinstance(event, Done | Failed):
            del self.turns[ticket_id]
        return turn

    def events(self, ticket: Ticket) -> Iterator[QueueEvent]:
        """A ticket's events, iterated in this thread, each fed to the controller first."""
        for event in ticket:
            self.feed(ticket.id, event)
            yield event

    def _follow(self, turn: Turn, event: QueueEvent) -> None:
        """Where the engine put the turn's messages, and what its conversation holds now."""
        if isinstance(event, TurnStarted):
            turn.user, turn.reply = event.user, event.reply
            if event.user is not None:
                self.length = event.user
        elif isinstance(event, Done) and event.context_start is not None:
            self.context_start, self.pinned = event.context_start, event.pinned
            self.context_used = event.metrics.context_used
            if turn.reply is not None:
                self.length = turn.reply + 1
        elif isinstance(event, Failed) and event.kept is not None:
            self.length = event.kept

    def _record(self, store: ConversationStore, turn: Turn, event: QueueEvent) -> None:
        if isinstance(event, TurnStarted):
            turn.saver = self._start(store, turn)
        elif turn.saver is None:
            return
        elif isinstance(event, TokenEvent):
            turn.saver.token(event.text)
        elif isinstance(event, Done):
            turn.saver.done(event)
        elif isinstance(event, Failed):  # forget what the turn saved
            keep = event.kept if event.kept is not None else turn.user
            if keep is not None:
                store.truncate(turn.saver.conv, keep)

    def _start(self, store: ConversationStore, turn: Turn) -> ReplySaver | None:
        """The engine took the turn: save its user message where the engine put it."""
        parent = self.conv
        if turn.kind == "continue":
            return self._extend(store, turn)
        if turn.kind == "regenerate":
            if parent is None or turn.reply is None:
                return None
            store.truncate(parent, turn.reply)  # the old reply and anything after it
            return ReplySaver(store, parent)
        if parent is None:
            title = title_of(turn.typed or turn.text)
            conv = store.new_conversation(title, asdict(self._active()), self.persona)
        elif turn.kind == "edit" and turn.user is not None:
            self.conv = None  # until the fork is written: a failed fork never touches the parent
            conv = store.fork(parent, turn.user)
            self.notify(f"forked: conversation #{conv} (#{parent} stays as it was)", "info")
        else:
            conv = parent
            if turn.user is not None:
                store.truncate(conv, turn.user)  # what a failed turn left after the history
        self.conv = conv
        msg = store.add_message(conv, "user", turn.text)
        for a in turn.attachments:
            store.add_attachment(msg, a.path, a.size, a.sha256, a.tokens, a.text)
        return ReplySaver(store, conv)

    def _extend(self, store: ConversationStore, turn: Turn) -> ReplySaver | None:
        """A continue: the saved reply it extends goes on being written."""
        if self.conv is None or turn.reply is None:
            return None
        rows = store.messages(self.conv)
        if turn.reply >= len(rows) or rows[turn.reply]["role"] != "assistant":
            return None
        last = rows[turn.reply]
        return ReplySaver(store, self.conv, msg=last["id"], text=last["content"])

    @contextmanager
    def _saving(self) -> Iterator[ConversationStore | None]:
        """The store to write to (None: not saving). A failed write keeps the chat going in
        memory: one line says so, and the store catches up once it takes writes again."""
        try:
            yield self.store
        except (UserError, sqlite3.Error) as exc:
            first = self.unsaved_from is None
            self.unsaved_from = self._first_unsure()
            self._retry_at = time.monotonic() + RETRY_S
            if first:
                self.notify(
                    f"not saved: {exc}; the chat goes on in memory and is saved as soon as the"
                    " store can be written (else exported to a file when the chat ends)",
                    "error",
                )

    def _first_unsure(self) -> int:
        """The first message the store may not hold in full, now that a write failed."""
        starts = [len(self.mirror.entries)]
        if self.unsaved_from is not None:
            starts.append(self.unsaved_from)
        for turn in self.turns.values():
            where = turn.reply if turn.kind == "regenerate" else turn.user
            starts += [where] if where is not None else []
        return max(0, min(starts))

    def _catch_up(
        self, store: ConversationStore, turn: Turn | None = None, event: object = None
    ) -> None:
        """Write what the store missed (at most every RETRY_S, and at a turn's end); from then
        on saving goes on as usual. A failed write here raises into _saving, which waits again."""
        assert self.unsaved_from is not None
        if turn is not None and isinstance(event, TurnStarted):
            if turn.kind == "edit":  # the fork becomes a new conversation; the parent stays
                self.conv, self.unsaved_from = None, 0
            else:
                where = turn.reply if turn.kind == "regenerate" else turn.user
                self.unsaved_from = min(self.unsaved_from, where if where is not None else 0)
        ending = isinstance(event, Done | Failed)
        if time.monotonic() < self._retry_at and not ending:
            return
        self._retry_at = time.monotonic() + RETRY_S
        profile = asdict(self.profile) if self.profile is not None else {}
        conv, streaming = self.mirror.catch_up(
            store, self.conv, self.unsaved_from, profile, self.persona
        )
        self.conv, self.unsaved_from = conv, None
        if turn is not None and not ending:
            saver = turn.saver = ReplySaver(store, conv)
            if streaming is not None:
                saver.msg, saver.parts = streaming, [self.mirror.entries[-1].content]
        count = len(self.mirror.entries)
        self.notify(
            f"saved again: conversation #{conv} ({count} messages) is in {store.path}", "info"
        )

    def _stop_replies(self) -> None:
        """Replies cut short without a Done (the chat restarted or closed): saved as stopped."""
        self.mirror.stop()
        savers = [turn.saver for turn in self.turns.values() if turn.saver is not None]
        with self._saving() as store:
            for saver in savers if store is not None and self.unsaved_from is None else ():
                saver.stop()

    def _settle(self) -> Path | None:
        """Before the conversation is left: one more try to write what the store missed, else
        export it to a file (named in one line). Returns the file."""
        store = self.store
        if self.unsaved_from is None or store is None:
            return None
        self._retry_at = 0.0
        with self._saving():
            self._catch_up(store)
        if self.unsaved_from is None:
            return None
        profile = asdict(self.profile) if self.profile is not None else {}
        path = self.mirror.export([store.path.parent], profile, self.persona)
        if path is None:
            self.notify(f"this chat could not be saved to {store.path} nor exported", "error")
        else:
            self.notify(
                f"this chat could not be saved to {store.path}: exported to {path}", "error"
            )
        return path

    def close(self) -> Path | None:
        """End the chat: a reply still streaming is saved as stopped, what the store missed is
        written or exported (the file is returned), and the store is closed. The caller stops
        the engine's work first (a cancelled reply's Done carries its figures)."""
        self._stop_replies()
        exported = self._settle()
        self.turns.clear()
        if self.store is not None:
            try:
                self.store.close()
            except sqlite3.Error:
                pass
            self.store = None
        return exported
