"""A store that stops taking writes mid-conversation (disk full, made read-only): the chat goes
on in memory with one notice, and what the store missed is written once it can be, or exported.

Two kinds of failure: a real full disk (a size-limited tmpfs, where mounting is permitted) and
an injected one (the store's connection answering "database or disk is full", as SQLite does on
ENOSPC), which runs everywhere and lets the test pick the exact write that fails.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from engine.config import Profile
from engine.conversation import Conversation
from engine.events import Done, TokenEvent
from engine.local import LocalBackend
from engine.queue import EngineQueue
from engine.store import DB_NAME, ConversationStore

WRITES = ("INSERT", "UPDATE", "DELETE")


class FullDisk:
    """The store's connection, answering writes as SQLite does on a full disk while `full`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.full, self.refused = db, False, 0

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if self.full and sql.lstrip().upper().startswith(WRITES):
            self.refused += 1
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


@pytest.fixture
def profile(tiny_profile: Profile) -> Profile:
    return replace(tiny_profile, context_length=1024)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[tuple[ConversationStore, FullDisk]]:
    store = ConversationStore(tmp_path / DB_NAME)
    proxy = FullDisk(store.db)
    store.db = proxy  # type: ignore[assignment]
    yield store, proxy


def history(engine: EngineQueue) -> list[tuple[str, str]]:
    backend = engine.backend
    assert isinstance(backend, LocalBackend) and backend.session is not None
    return [(m.role, m.content) for m in backend.session.messages]


def saved(store: ConversationStore, conv: int | None) -> list[tuple[str, str]]:
    assert conv is not None
    return [(m["role"], m["content"]) for m in store.messages(conv)]


def turn(chat: Conversation, text: str) -> list[object]:
    return list(chat.events(chat.send(text).ticket))


def test_a_full_disk_mid_chat_keeps_every_message_and_catches_up(
    engine: EngineQueue, disk: tuple[ConversationStore, FullDisk], profile: Profile
) -> None:
    store, proxy = disk
    notes: list[tuple[str, str]] = []
    chat = Conversation(engine, store, profile=profile, notify=lambda t, k: notes.append((k, t)))
    turn(chat, "saved as usual")
    conv = chat.conv
    proxy.full = True
    turn(chat, "the disk is full now")
    turn(chat, "still full")
    assert proxy.refused >= 1 and len(history(engine)) == 6
    assert saved(store, conv) == history(engine)[:2]  # nothing written, nothing half-written
    [(kind, text)] = notes
    assert kind == "error" and "database or disk is full" in text and str(store.path) in text
    proxy.full = False
    turn(chat, "space again")
    assert chat.conv == conv and saved(store, conv) == history(engine)  # all 8, in order
    rows = store.messages(conv)  # type: ignore[arg-type]
    assert [r["seq"] for r in rows] == list(range(8))
    assert all(json.loads(r["metrics_json"])["generated_tokens"] >= 1 for r in rows[1::2])
    assert notes[-1] == (
        "info",
        f"saved again: conversation #{conv} (8 messages) is in {store.path}",
    )
    assert chat.close() is None  # nothing left to export


def test_a_disk_that_fills_mid_reply_saves_the_reply_in_full_when_it_frees(
    engine: EngineQueue, disk: tuple[ConversationStore, FullDisk], profile: Profile
) -> None:
    store, proxy = disk
    chat = Conversation(engine, store, profile=replace(profile, max_new_tokens=60))
    ticket = chat.send("a long one").ticket
    tokens = 0
    done: Done | None = None
    for event in chat.events(ticket):
        tokens += isinstance(event, TokenEvent)
        proxy.full = 3 <= tokens < 20  # full from the 3rd token to the 20th
        if isinstance(event, Done):
            done = event
    assert done is not None and done.metrics.generated_tokens >= 20
    [user, reply] = store.messages(chat.conv)  # type: ignore[arg-type]
    assert user["content"] == "a long one" and reply["content"] == done.text
    assert reply["stopped"] == 0 and json.loads(reply["metrics_json"])["generated_tokens"] >= 20


def test_an_edit_while_the_disk_is_full_leaves_the_original_alone(
    engine: EngineQueue, disk: tuple[ConversationStore, FullDisk], profile: Profile
) -> None:
    store, proxy = disk
    chat = Conversation(engine, store, profile=profile)
    turn(chat, "first")
    turn(chat, "second")
    original = chat.conv
    before = saved(store, original)
    proxy.full = True
    list(chat.events(chat.edit(2, "second, edited").ticket))
    proxy.full = False
    turn(chat, "after the edit")
    assert saved(store, original) == before  # the parent never sees the edit
    assert chat.conv != original and saved(store, chat.conv) == history(engine)
    assert [text for _, text in history(engine)][2] == "second, edited"


def test_a_store_that_never_comes_back_is_exported_on_close(
    engine: EngineQueue, disk: tuple[ConversationStore, FullDisk], profile: Profile
) -> None:
    store, proxy = disk
    notes: list[tuple[str, str]] = []
    chat = Conversation(engine, store, profile=profile, notify=lambda t, k: notes.append((k, t)))
    turn(chat, "one")
    proxy.full = True
    turn(chat, "two")
    exported = chat.close()
    assert exported is not None and exported.parent == store.path.parent
    doc = json.loads(exported.read_text())
    assert [(m["role"], m["content"]) for m in doc["messages"]] == history(engine)
    assert notes[-1] == (
        "error",
        f"this chat could not be saved to {store.path}: exported to {exported}",
    )
    again = ConversationStore(store.path)  # what had been written is intact
    [row] = again.list_conversations()
    assert saved(again, row["id"]) == history(engine)[:2]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real full disk (ENOSPC). Needs root and mount; skipped elsewhere."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path) -> Path:
    """Take every free byte of the file system (the filler file is returned)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_real_full_disk_keeps_the_chat_and_catches_up_once_space_is_freed(
    engine: EngineQueue, profile: Profile, small_fs: Path
) -> None:
    store = ConversationStore(small_fs / DB_NAME)
    notes: list[tuple[str, str]] = []
    chat = Conversation(engine, store, profile=profile, notify=lambda t, k: notes.append((k, t)))
    turn(chat, "before the disk filled")
    filler = fill(small_fs)
    for i in range(3):  # long messages: new pages are needed, and there are none
        turn(chat, f"turn {i} " + "many words to store " * 150)
    assert notes and notes[0][0] == "error" and "full" in notes[0][1]
    assert len(history(engine)) == 8
    filler.unlink()
    turn(chat, "space again")
    assert saved(store, chat.conv) == history(engine)
    assert notes[-1][1].startswith("saved again:")
    chat.close()
    again = ConversationStore(small_fs / DB_NAME)
    assert again.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert saved(again, chat.conv or again.list_conversations()[0]["id"]) == history(engine)


def files(store: ConversationStore, conv: int | None) -> list[list[tuple[str, str]]]:
    """Each message's attachments as (path, text)."""
    assert conv is not None
    return [[(a.path, a.text) for a in store.attached(m["id"])] for m in store.messages(conv)]


def test_files_and_persona_sent_while_the_disk_is_full_are_written_when_it_frees(
    engine: EngineQueue, disk: tuple[ConversationStore, FullDisk], profile: Profile, tmp_path: Path
) -> None:
    store, proxy = disk
    note = tmp_path / "note.txt"
    note.write_text("the password is swordfish\n")
    chat = Conversation(engine, store, profile=profile)
    chat.set_persona("pirate")
    proxy.full = True  # the very first turn is refused: the conversation itself is new
    chat.attach(note)
    turn(chat, "what is the password?")
    assert chat.conv is None and not store.list_conversations()
    proxy.full = False
    turn(chat, "and now?")
    assert saved(store, chat.conv) == history(engine)
    assert files(store, chat.conv) == [[(str(note), "the password is swordfish\n")], [], [], []]
    assert store.get(chat.conv or 0)["persona"] == "pirate"


def test_an_export_keeps_the_files_and_history_import_reads_them_back(
    engine: EngineQueue, disk: tuple[ConversationStore, FullDisk], profile: Profile, tmp_path: Path
) -> None:
    store, proxy = disk
    note = tmp_path / "note.txt"
    note.write_text("line\n")
    chat = Conversation(engine, store, profile=profile)
    proxy.full = True
    chat.attach(note)
    turn(chat, "read it")
    exported = chat.close()
    assert exported is not None
    doc = json.loads(exported.read_text())
    [record] = doc["messages"][0]["attachments"]
    assert (record["path"], record["text"], record["size"]) == (str(note), "line\n", 5)
    again = ConversationStore(store.path)  # close() closed the one the chat used
    conv = again.import_conversation(doc)
    assert files(again, conv) == [[(str(note), "line\n")], []]
