"""The chat controller without any front end: the real engine queue over the tiny model, a real
store. What is saved when, what failed, stopped, edited and regenerated turns leave behind."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config import Profile
from engine.conversation import Conversation, Turn
from engine.events import Done, Failed, TokenEvent, TurnStarted
from engine.local import LocalBackend
from engine.queue import EngineQueue, LoadRequest, QueueEvent
from engine.session import ChatSession
from engine.store import ConversationStore

LONG_SYSTEM = "rule " * 80  # over the whole prompt budget of a 64-token context


@pytest.fixture
def profile(tiny_profile: Profile) -> Profile:
    return replace(tiny_profile, context_length=1024)


def session(engine: EngineQueue) -> ChatSession:
    backend = engine.backend
    assert isinstance(backend, LocalBackend) and backend.session is not None
    return backend.session


def history(engine: EngineQueue) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in session(engine).messages]


def saved(store: ConversationStore, conv: int | None) -> list[tuple[str, str]]:
    assert conv is not None
    return [(m["role"], m["content"]) for m in store.messages(conv)]


def run(chat: Conversation, turn: Turn) -> list[QueueEvent]:
    return list(chat.events(turn.ticket))


def test_turns_are_saved_where_the_engine_put_them(
    engine: EngineQueue, store: ConversationStore, profile: Profile
) -> None:
    chat = Conversation(engine, store, profile=profile)
    first = chat.send("hello there")
    [started] = [e for e in run(chat, first) if isinstance(e, TurnStarted)]
    assert (started.user, started.reply) == (0, 1) == (first.user, first.reply)
    second = chat.send("and again")
    run(chat, second)
    assert (second.user, second.reply) == (2, 3) and chat.length == 4 and not chat.busy
    assert saved(store, chat.conv) == history(engine)
    [row] = store.list_conversations()
    assert row["title"] == "hello there" and json.loads(row["profile_json"])["name"] == "tiny"
    metrics = json.loads(store.messages(row["id"])[1]["metrics_json"])
    assert metrics["generated_tokens"] > 0 and metrics["stop_reason"] == "length"
    # regenerate replaces the last reply, in the session and on disk
    again = chat.regenerate()
    run(chat, again)
    assert (again.user, again.reply) == (2, 3)
    assert len(history(engine)) == 4 and saved(store, chat.conv) == history(engine)


def test_an_edit_forks_the_saved_conversation(
    engine: EngineQueue, store: ConversationStore, profile: Profile
) -> None:
    notes: list[tuple[str, str]] = []
    chat = Conversation(engine, store, profile=profile, notify=lambda t, k: notes.append((k, t)))
    run(chat, chat.send("first question"))
    run(chat, chat.send("second question"))
    original = chat.conv
    before = saved(store, original)
    edit = chat.edit(0, "first question, edited")
    run(chat, edit)
    assert edit.user == 0 and chat.length == 2 and chat.conv != original
    assert saved(store, original) == before  # the old branch is intact
    assert saved(store, chat.conv) == history(engine)
    assert history(engine)[0] == ("user", "first question, edited")
    assert chat.conv is not None
    row = store.get(chat.conv)
    assert (row["parent_id"], row["forked_at"]) == (original, 0)
    assert notes == [("info", f"forked: conversation #{chat.conv} (#{original} stays as it was)")]


def test_a_refused_edit_says_what_the_conversation_keeps(
    engine: EngineQueue, store: ConversationStore, profile: Profile
) -> None:
    chat = Conversation(engine, store, profile=profile)
    run(chat, chat.send("hi"))
    [failed] = [e for e in run(chat, chat.edit(1, "x")) if isinstance(e, Failed)]
    assert "not a user message" in failed.message and failed.kept == 2
    assert chat.length == 2 and not chat.busy and saved(store, chat.conv) == history(engine)


def test_a_failed_turn_saves_nothing(store: ConversationStore, profile: Profile) -> None:
    queue = EngineQueue(LocalBackend())
    failing = replace(profile, context_length=64, system_prompt=LONG_SYSTEM)
    try:
        list(queue.submit(LoadRequest(failing)))
        chat = Conversation(queue, store, profile=failing)
        [failed] = [e for e in run(chat, chat.send("hi there")) if isinstance(e, Failed)]
    finally:
        queue.close()
    assert "system_prompt" in failed.message and failed.kept == 0
    assert store.list_conversations() == [] and chat.conv is None and chat.length == 0


def test_a_failed_regenerate_is_put_right_by_the_next_turn(
    engine: EngineQueue, store: ConversationStore, profile: Profile
) -> None:
    """The session drops the answered pair before it fails; the store catches up when the next
    turn starts, saving its user message where the engine put it."""
    short = replace(profile, context_length=64)
    list(engine.submit(LoadRequest(short)))
    chat = Conversation(engine, store, profile=short)
    run(chat, chat.send("hi"))
    list(engine.submit(LoadRequest(replace(short, system_prompt=LONG_SYSTEM))))
    [failed] = [e for e in run(chat, chat.regenerate()) if isinstance(e, Failed)]
    assert failed.kept == 0 and chat.length == 0 and history(engine) == []
    list(engine.submit(LoadRequest(short)))
    turn = chat.send("again")
    run(chat, turn)
    assert turn.user == 0 and saved(store, chat.conv) == history(engine)
    assert [text for _, text in history(engine)][0] == "again"


def test_a_store_that_stays_unwritable_is_exported_when_the_chat_ends(
    engine: EngineQueue, store: ConversationStore, profile: Profile
) -> None:
    notes: list[tuple[str, str]] = []
    chat = Conversation(engine, store, profile=profile, notify=lambda t, k: notes.append((k, t)))
    store.db.close()  # every write fails from here on
    run(chat, chat.send("hi"))
    run(chat, chat.send("still chatting"))
    assert chat.store is store and len(history(engine)) == 4  # the chat went on
    [(kind, text)] = notes  # one line, not one per failed write
    assert kind == "error" and text.startswith("not saved: cannot write conversation store")
    assert "goes on in memory" in text
    exported = chat.close()
    assert exported is not None and exported.parent == store.path.parent
    doc = json.loads(exported.read_text())
    assert [(m["role"], m["content"]) for m in doc["messages"]] == history(engine)
    assert doc["messages"][1]["metrics"]["generated_tokens"] >= 1 and doc["title"] == "hi"
    assert notes[-1] == (
        "error",
        f"this chat could not be saved to {store.path}: exported to {exported}",
    )


def test_starting_over_saves_a_reply_cut_short_as_stopped(
    engine: EngineQueue, store: ConversationStore, profile: Profile
) -> None:
    chat = Conversation(engine, store, profile=replace(profile, max_new_tokens=400))
    turn = chat.send("go on forever")
    shown = 0
    for event in chat.events(turn.ticket):
        shown += isinstance(event, TokenEvent) and bool(event.text)
        if shown == 3:
            break
    conv = chat.conv
    assert turn.saver is not None and chat.busy
    list(chat.events(chat.restart()))
    rows = store.messages(conv)  # type: ignore[arg-type]
    assert [r["role"] for r in rows] == ["user", "assistant"]
    assert rows[1]["stopped"] == 1 and rows[1]["content"] == "".join(turn.saver.parts)
    assert chat.conv is None and chat.length == 0 and not chat.busy and history(engine) == []


def test_resume_goes_on_where_the_saved_conversation_ends(
    engine: EngineQueue, store: ConversationStore, profile: Profile
) -> None:
    conv = store.new_conversation("about the sea", {})
    store.add_message(conv, "user", "what colour is the sea?")
    store.add_message(conv, "assistant", "Blue, mostly.")
    chat = Conversation(engine, store, profile=profile)
    title, messages = chat.resume(store, conv)
    assert title == "about the sea" and chat.length == 2 and chat.conv == conv
    assert messages == [
        ("user", "what colour is the sea?", False, (), None),
        ("assistant", "Blue, mostly.", False, (), None),
    ]
    turn = chat.send("and the sky?")
    run(chat, turn)
    assert turn.user == 2 and len(history(engine)) == 4
    assert saved(store, conv) == history(engine) and len(store.list_conversations()) == 1


def test_resume_gives_what_was_typed_its_files_and_the_persona(
    engine: EngineQueue, store: ConversationStore, profile: Profile, tmp_path: Path
) -> None:
    note = tmp_path / "note.txt"
    note.write_text("tide tables\n")
    chat = Conversation(engine, store, profile=profile)
    chat.set_persona("sailor")
    chat.attach(note)
    run(chat, chat.send("read this"))
    conv = chat.conv or 0
    other = Conversation(engine, store, profile=profile)
    _, messages = other.resume(store, conv)
    user = messages[0]
    assert (user.role, user.text) == ("user", "read this")
    [file] = user.attachments
    assert (file.path, file.text, file.size) == (str(note), "tide tables\n", 12)
    assert file.tokens > 0 and other.persona == "sailor"
    assert history(engine)[0][1].endswith("read this") and "tide tables" in history(engine)[0][1]


def test_the_controller_follows_the_pins(engine: EngineQueue, profile: Profile) -> None:
    chat = Conversation(engine, profile=profile)
    run(chat, chat.send("remember this"))
    list(chat.events(chat.pin(0)))
    assert chat.pinned == (0,)
    [done] = [e for e in run(chat, chat.send("next")) if isinstance(e, Done)]
    assert done.pinned == chat.pinned == (0,) and session(engine).pinned == {0}
    list(chat.events(chat.pin(0, pinned=False)))
    assert chat.pinned == () and session(engine).pinned == set()
