"""ConversationStore: WAL on, round trip, incremental reply saves, exports, one-line errors."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.store import DB_NAME, ConversationStore, data_dir


def test_wal_mode_on(store: ConversationStore) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_round_trip_survives_reopen(store: ConversationStore, tmp_path: Path) -> None:
    conv = store.new_conversation("greeting", {"model": None, "temperature": 0.0})
    store.add_message(conv, "user", "hi")
    store.add_message(conv, "assistant", "hello there", {"generated_tokens": 3})
    store.close()
    again = ConversationStore(tmp_path / DB_NAME)
    [row] = again.list_conversations()
    assert (row["id"], row["title"], row["message_count"]) == (conv, "greeting", 2)
    msgs = again.messages(conv)
    assert [(m["seq"], m["role"], m["content"]) for m in msgs] == [
        (0, "user", "hi"),
        (1, "assistant", "hello there"),
    ]
    assert json.loads(msgs[1]["metrics_json"]) == {"generated_tokens": 3}
    assert msgs[0]["metrics_json"] is None


def test_incremental_update_visible_to_another_connection(
    store: ConversationStore, tmp_path: Path
) -> None:
    conv = store.new_conversation("t", {})
    msg = store.add_message(conv, "assistant", "Hel")
    reader = sqlite3.connect(tmp_path / DB_NAME)
    assert reader.execute("SELECT content FROM messages WHERE id=?", (msg,)).fetchone() == ("Hel",)
    store.update_message(msg, "Hello wor")
    assert reader.execute(
        "SELECT content, stopped FROM messages WHERE id=?", (msg,)
    ).fetchone() == (
        "Hello wor",
        0,
    )
    store.update_message(msg, "Hello world", {"stop_reason": "cancelled"}, stopped=True)
    [m] = store.messages(conv)
    assert (m["content"], m["stopped"]) == ("Hello world", 1)
    assert json.loads(m["metrics_json"]) == {"stop_reason": "cancelled"}


def test_exports(store: ConversationStore) -> None:
    conv = store.new_conversation("Two turns", {"name": "defaults"})
    store.add_message(conv, "user", "What is 2+2?")
    a = store.add_message(conv, "assistant", "4")
    store.update_message(a, "4.", {"generated_tokens": 2}, stopped=True)
    md = store.export_markdown(conv)
    assert md.startswith("# Two turns\n")
    assert "## user\n\nWhat is 2+2?\n" in md
    assert "## assistant (stopped)\n\n4.\n" in md
    data = store.export_json(conv)
    json.dumps(data)  # serialisable as is
    assert data["title"] == "Two turns" and data["profile"] == {"name": "defaults"}
    assert [(m["role"], m["content"], m["stopped"]) for m in data["messages"]] == [
        ("user", "What is 2+2?", False),
        ("assistant", "4.", True),
    ]
    assert data["messages"][1]["metrics"] == {"generated_tokens": 2}


def test_rename_and_delete(store: ConversationStore) -> None:
    a = store.new_conversation("a", {})
    b = store.new_conversation("b", {})
    store.add_message(a, "user", "x")
    store.rename(b, "renamed")
    store.delete(a)
    assert not store.exists(a) and store.exists(b)
    assert [(r["id"], r["title"]) for r in store.list_conversations()] == [(b, "renamed")]
    assert store.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    with pytest.raises(UserError, match=f"no conversation with id {a}"):
        store.messages(a)


def test_unwritable_dir_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = blocker / "sub" / DB_NAME  # a parent that is a file cannot be created
    with pytest.raises(UserError, match=re.escape(str(path))):
        ConversationStore(path)


def test_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_TUI_DATA_DIR", str(tmp_path / "env"))
    assert data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("LLAMA_TUI_DATA_DIR")
    assert data_dir(None).name == "llama-tui"


def test_fork_copies_the_prefix_and_leaves_the_parent_alone(store: ConversationStore) -> None:
    conv = store.new_conversation("trip", {"name": "defaults"})
    for role, text in [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]:
        store.add_message(conv, role, text)
    fork = store.fork(conv, 2)
    store.add_message(fork, "user", "c edited")
    assert [m["content"] for m in store.messages(conv)] == ["a", "b", "c", "d"]
    assert [(m["seq"], m["content"]) for m in store.messages(fork)] == [
        (0, "a"),
        (1, "b"),
        (2, "c edited"),
    ]
    row = store.get(fork)
    assert (row["parent_id"], row["forked_at"], row["title"]) == (conv, 2, "trip")
    assert store.get(conv)["parent_id"] is None
    listed = {r["id"]: r["message_count"] for r in store.list_conversations()}
    assert listed == {conv: 4, fork: 3}
    assert store.export_json(fork)["parent_id"] == conv
    with pytest.raises(UserError, match="no conversation with id 99"):
        store.fork(99, 0)


def test_fork_copies_the_files_and_the_persona(store: ConversationStore) -> None:
    conv = store.new_conversation("files", {}, persona="pirate")
    first = store.add_message(conv, "user", "<file>a</file> read it")
    store.add_attachment(first, "/tmp/a.txt", 1, "00", 3, "a")
    store.add_message(conv, "assistant", "done")
    later = store.add_message(conv, "user", "<file>b</file> and this")
    store.add_attachment(later, "/tmp/b.txt", 1, "11", 3, "b")
    fork = store.fork(conv, 2)
    copied = [store.attached(m["id"]) for m in store.messages(fork)]
    assert [[(a.path, a.text, a.tokens) for a in f] for f in copied] == [
        [("/tmp/a.txt", "a", 3)],
        [],
    ]
    assert store.get(fork)["persona"] == "pirate"
    assert [len(store.attached(m["id"])) for m in store.messages(conv)] == [1, 0, 1]


def test_a_migration_that_another_process_is_making_is_found_done(tmp_path: Path) -> None:
    """Two processes opening one file at once: the other adds the columns while this one's
    check still sees them missing (test_two_writers had hit "duplicate column name")."""
    path = tmp_path / DB_NAME
    ConversationStore(path).close()  # the current schema, then made old again below
    other = sqlite3.connect(path, isolation_level=None)
    for column in ("parent_id", "forked_at", "persona"):
        other.execute(f"ALTER TABLE conversations DROP COLUMN {column}")
    other.execute("BEGIN IMMEDIATE")  # the other process migrating, not yet committed
    for column, kind in (("parent_id", "INTEGER"), ("forked_at", "INTEGER"), ("persona", "TEXT")):
        other.execute(f"ALTER TABLE conversations ADD COLUMN {column} {kind}")
    opened: list[str] = []

    def open_store() -> None:
        try:
            ConversationStore(path).close()
            opened.append("opened")
        except BaseException as exc:  # the assertion below shows it
            opened.append(repr(exc))

    thread = threading.Thread(target=open_store)
    thread.start()
    thread.join(0.5)  # it waits for the write lock ...
    assert thread.is_alive() and not opened
    other.execute("COMMIT")  # ... and finds the columns there once it has it
    thread.join(10)
    other.close()
    assert opened == ["opened"]
    store = ConversationStore(path)
    conv = store.new_conversation("t", {}, persona="pirate")
    assert store.get(conv)["persona"] == "pirate"
    store.close()


def test_truncate_drops_the_tail(store: ConversationStore) -> None:
    conv = store.new_conversation("t", {})
    for text in "abc":
        store.add_message(conv, "user", text)
    store.truncate(conv, 1)
    store.add_message(conv, "user", "z")
    assert [(m["seq"], m["content"]) for m in store.messages(conv)] == [(0, "a"), (1, "z")]


def test_old_files_gain_the_fork_columns(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
        " created REAL NOT NULL, updated REAL NOT NULL, profile_json TEXT NOT NULL);"
        "INSERT INTO conversations VALUES (1, 'before forks', 0, 0, '{}');"
    )
    old.commit()
    old.close()
    store = ConversationStore(path)
    columns = {r["name"] for r in store.db.execute("PRAGMA table_info(conversations)")}
    assert {"parent_id", "forked_at"} <= columns
    [row] = store.list_conversations()
    assert (row["title"], row["parent_id"], row["message_count"]) == ("before forks", None, 0)
    store.add_message(1, "user", "hi")
    assert store.fork(1, 1) == 2
    store.close()
    assert ConversationStore(path).get(2)["parent_id"] == 1  # reopening migrates nothing twice
