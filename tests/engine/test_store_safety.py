"""Opening the store: a broken file moved aside (never deleted), the schema version, and two
writers on one file (busy timeout, retries)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.store import DB_NAME, SCHEMA_VERSION, ConversationStore


def filled(path: Path, messages: int = 300) -> int:
    store = ConversationStore(path)
    conv = store.new_conversation("kept", {})
    for i in range(messages):
        store.add_message(conv, "user", f"message {i} " + "x" * 400)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return conv


def moved_aside(path: Path) -> list[Path]:
    found = path.parent.glob(f"{path.name}.broken-*")
    return sorted(p for p in found if not p.name.endswith(("-wal", "-shm")))


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_store_made(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_NAME
    garbage = b"this is not sqlite at all" * 100
    path.write_bytes(garbage)
    store = ConversationStore(path)
    [kept] = moved_aside(path)
    assert kept.read_bytes() == garbage  # kept byte for byte
    assert store.notice is not None and "\n" not in store.notice
    assert str(path) in store.notice and str(kept) in store.notice
    assert "file is not a database" in store.notice and "new empty store" in store.notice
    conv = store.new_conversation("fresh", {})
    store.add_message(conv, "user", "hi")
    assert [r["title"] for r in store.list_conversations()] == ["fresh"]
    again = ConversationStore(path)  # the fresh one is sound: nothing moved a second time
    assert again.notice is None and len(moved_aside(path)) == 1


def test_a_damaged_page_fails_quick_check_and_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    filled(path)
    data = bytearray(path.read_bytes())
    data[4096 * 5 : 4096 * 6] = bytes(range(256)) * 16  # one page of the messages overwritten
    path.write_bytes(bytes(data))
    store = ConversationStore(path)
    [kept] = moved_aside(path)
    assert kept.read_bytes() == bytes(data)
    assert store.notice is not None and "was broken" in store.notice
    assert store.list_conversations() == []


def test_a_broken_wal_beside_it_moves_too(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    path.write_bytes(b"\0garbage" * 600)
    Path(f"{path}-wal").write_bytes(b"wal bytes")
    ConversationStore(path)
    [kept] = moved_aside(path)
    kept_wal = Path(f"{kept}-wal")
    assert kept_wal.read_bytes() == b"wal bytes"


def test_an_old_file_is_migrated_to_this_schema_version(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    old = sqlite3.connect(path)  # the first release: no fork columns, user_version 0
    old.executescript(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, created REAL"
        " NOT NULL, updated REAL NOT NULL, profile_json TEXT NOT NULL);"
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, created REAL NOT NULL,"
        " metrics_json TEXT, stopped INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO conversations VALUES (1, 'old chat', 0, 0, '{}');"
        "INSERT INTO messages VALUES (1, 1, 0, 'user', 'hello from before', 0, NULL, 0);"
    )
    old.commit()
    old.close()
    store = ConversationStore(path)
    assert store.notice is None and not store.read_only
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert [m["content"] for m in store.messages(1)] == ["hello from before"]
    assert store.fork(1, 1) == 2 and store.get(2)["parent_id"] == 1


def test_a_newer_schema_is_opened_read_only_and_never_changed(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    conv = filled(path, messages=3)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    store = ConversationStore(path)
    assert store.read_only and store.notice is not None and "\n" not in store.notice
    assert f"schema version {SCHEMA_VERSION + 1}" in store.notice and "read-only" in store.notice
    assert str(path) in store.notice
    assert len(store.messages(conv)) == 3  # still readable: history works
    with pytest.raises(UserError, match="read-only"):
        store.add_message(conv, "user", "lost?")
    with pytest.raises(UserError, match="read-only"):
        store.new_conversation("new", {})
    store.close()
    assert path.read_bytes() == before and not moved_aside(path)


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another connection (as another process would) holding the write lock for `seconds`."""
    locked = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute(
            "INSERT INTO conversations (title, created, updated, profile_json)"
            " VALUES ('other', 0, 0, '{}')"
        )
        locked.set()
        time.sleep(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(5)
    return thread


def test_a_write_waits_for_another_writers_lock(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / DB_NAME, busy_timeout=0.1)
    conv = store.new_conversation("mine", {})
    holder = hold_write_lock(store.path, 0.35)  # longer than one busy timeout: retried
    store.add_message(conv, "user", "written after the other's commit")
    holder.join(5)
    assert {r["title"] for r in store.list_conversations()} == {"mine", "other"}
    assert [m["content"] for m in store.messages(conv)] == ["written after the other's commit"]


def test_a_lock_never_released_is_a_one_line_error_naming_the_store(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / DB_NAME, busy_timeout=0.05)
    conv = store.new_conversation("mine", {})
    holder = hold_write_lock(store.path, 3.0)
    t0 = time.monotonic()
    with pytest.raises(UserError) as info:
        store.add_message(conv, "user", "cannot land")
    assert time.monotonic() - t0 < 2.5  # bounded: retries, then the error
    assert str(store.path) in str(info.value) and "busy" in str(info.value)
    holder.join(5)
    store.add_message(conv, "user", "lands now")
    assert [m["content"] for m in store.messages(conv)] == ["lands now"]


def test_an_unreadable_store_is_not_moved_aside(tmp_path: Path) -> None:
    """Only a broken file moves; one that cannot be opened (a folder in its place) is an error."""
    path = tmp_path / DB_NAME
    path.mkdir()
    with pytest.raises(UserError, match="cannot open conversation store"):
        ConversationStore(path)
    assert path.is_dir() and not moved_aside(path)
    assert os.listdir(tmp_path) == [DB_NAME]
