"""Search (FTS5 over every saved message), import (our export and the OpenAI shape) and the
code blocks of a reply: the real store in a temporary folder."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from engine.codeblocks import CodeBlock, code_blocks
from engine.errors import UserError
from engine.importing import read_import
from engine.store import DB_NAME, MARK, SEARCH_SCHEMA, ConversationStore


def hits(store: ConversationStore, query: str, prefix: bool = False) -> list[tuple[int, int, str]]:
    return [(r["conversation_id"], r["seq"], r["role"]) for r in store.search(query, prefix=prefix)]


def test_search_finds_user_and_assistant_messages_best_first(store: ConversationStore) -> None:
    a = store.new_conversation("cooking", {})
    store.add_message(a, "user", "how long do I boil an egg?")
    reply = store.add_message(a, "assistant", "Boil")  # streamed: rewritten as it grows
    store.update_message(reply, "Boil it for seven minutes; a soft egg takes six.")
    b = store.new_conversation("eggs everywhere", {})
    store.add_message(b, "user", "egg egg egg: a poem about an egg")
    store.add_message(b, "assistant", "no match in here")
    assert hits(store, "egg") == [(b, 0, "user"), (a, 0, "user"), (a, 1, "assistant")]
    assert hits(store, "minutes") == [(a, 1, "assistant")]  # the update was indexed
    assert hits(store, "Boil") == [(a, 0, "user"), (a, 1, "assistant")]  # bm25: the shorter
    assert hits(store, "boil seven") == [(a, 1, "assistant")]  # every word must match
    [row] = store.search("minutes")
    start, end = MARK
    assert row["snippet"] == f"Boil it for seven {start}minutes{end}; a soft egg takes six."
    assert row["title"] == "cooking"
    assert hits(store, "minu", prefix=True) == [(a, 1, "assistant")]  # as it is typed
    assert hits(store, "minu") == []
    assert hits(store, 'egg" OR "x') == []  # quotes and operators are words, not syntax
    assert hits(store, "   ") == []


def test_deleted_and_truncated_messages_leave_the_results(store: ConversationStore) -> None:
    a = store.new_conversation("a", {})
    store.add_message(a, "user", "pelican facts")
    store.add_message(a, "assistant", "pelicans have a pouch")
    b = store.new_conversation("b", {})
    store.add_message(b, "user", "pelican again")
    store.truncate(a, 1)
    assert hits(store, "pelicans") == []
    store.delete(b)
    assert hits(store, "pelican") == [(a, 0, "user")]


def test_a_store_from_before_search_is_migrated_and_searchable(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
        " created REAL NOT NULL, updated REAL NOT NULL, profile_json TEXT NOT NULL,"
        " parent_id INTEGER, forked_at INTEGER);"
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, created REAL NOT NULL,"
        " metrics_json TEXT, stopped INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO conversations VALUES (1, 'old chat', 0, 0, '{}', NULL, NULL);"
        "INSERT INTO messages VALUES (1, 1, 0, 'user', 'what is a quasar?', 0, NULL, 0);"
        "INSERT INTO messages VALUES (2, 1, 1, 'assistant', 'A bright galactic core.', 0, NULL, 0);"
    )
    old.commit()
    old.close()
    store = ConversationStore(path)
    assert hits(store, "quasar") == [(1, 0, "user")]
    assert hits(store, "galactic") == [(1, 1, "assistant")]
    assert store.get(1)["persona"] is None
    store.add_message(1, "user", "and a quasar's distance?")
    store.close()
    again = ConversationStore(path)  # reopening builds nothing twice
    assert hits(again, "quasar") == [(1, 0, "user"), (1, 2, "user")]


# Import ------------------------------------------------------------------------------------


def test_our_export_round_trips_exactly(store: ConversationStore, tmp_path: Path) -> None:
    conv = store.new_conversation("round trip", {"name": "precise", "seed": 0}, "pirate")
    user = store.add_message(conv, "user", '<file name="a.txt">\nhi\n</file>\n\nread it')
    store.add_attachment(user, "/tmp/a.txt", 3, "ab" * 32, 7, "hi\n")
    reply = store.add_message(conv, "assistant", "Arr, it says hi")
    store.update_message(reply, "Arr, it says hi.", {"generated_tokens": 5}, stopped=True)
    exported = store.export_json(conv)
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(exported))
    copy = store.import_conversation(read_import(path))
    again = store.export_json(copy)
    assert copy != conv and again.pop("id") == copy and exported.pop("id") == conv
    assert again == exported  # every field, attachments and persona included
    assert again["messages"][0]["attachments"][0]["text"] == "hi\n"


def test_the_openai_shape_imports(store: ConversationStore, tmp_path: Path) -> None:
    path = tmp_path / "openai.json"
    messages = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour"}],
        },
        {"role": "assistant", "content": "Teal."},
    ]
    path.write_text(json.dumps({"messages": messages}))
    conv = store.import_conversation(read_import(path))
    data = store.export_json(conv)
    assert data["title"] == "Name a colour"
    assert data["profile"] == {"system_prompt": "You are terse."}
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", "Name a colour"),
        ("assistant", "Teal."),
    ]
    assert hits(store, "teal") == [(conv, 1, "assistant")]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{not json", "bad.json:1:2: not JSON: Expecting property name enclosed in double quotes"),
        ("[1, 2]", 'bad.json: expected a JSON object with a "messages" array'),
        (
            '{"messages": [{"role": "tool", "content": "x"}]}',
            "bad.json: messages[1]: role 'tool' is not system, user or assistant",
        ),
        (
            '{"messages": [{"role": "user", "content": 3}]}',
            'bad.json: messages[1]: "content" must be a string or an array of text parts',
        ),
        (
            '{"title": "t", "profile": {}, "messages": [{"role": "user"}]}',
            'bad.json: messages[1]: "content" must be a string',
        ),
        (
            '{"title": "t", "profile": {}, "messages": [], "forked_at": "2"}',
            'bad.json: "forked_at" must be an integer or null',
        ),
    ],
)
def test_bad_import_files_are_one_line_errors(
    store: ConversationStore, tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        read_import(path)
    assert str(exc.value).replace(str(tmp_path) + "/", "").startswith(error)
    assert "\n" not in str(exc.value) and store.list_conversations() == []


def test_a_missing_import_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope.json: no such file"):
        read_import(tmp_path / "nope.json")


# Code blocks -------------------------------------------------------------------------------

THREE_BLOCKS = """Here you go:

```python
def add(a, b):
    return a + b
```

Then run:

~~~bash
python add.py
~~~

And the config:

````
key = 1
```not a fence end```
````
"""


def test_code_blocks_are_found_in_order() -> None:
    assert code_blocks(THREE_BLOCKS) == [
        CodeBlock("python", "def add(a, b):\n    return a + b"),
        CodeBlock("bash", "python add.py"),
        CodeBlock("", "key = 1\n```not a fence end```"),
    ]
    assert [b.describe() for b in code_blocks(THREE_BLOCKS)] == [
        "python, 2 lines",
        "bash, 1 line",
        "no language, 2 lines",
    ]
    assert code_blocks("cut short:\n```js\nlet x") == [CodeBlock("js", "let x")]
    assert code_blocks("no code here") == []


def test_a_second_process_creating_the_index_too_changes_nothing(tmp_path: Path) -> None:
    # two processes opening a new store at once both find no index and both create it: the
    # second, under the write lock after the first, must neither fail nor index twice
    first = ConversationStore(tmp_path / DB_NAME)
    chat = first.new_conversation("boats", {})
    first.add_message(chat, "user", "a boat on the lake")
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    db.executescript(f"BEGIN IMMEDIATE; {SEARCH_SCHEMA} COMMIT;")  # the late process's step
    db.close()
    first.add_message(chat, "assistant", "the boat drifts")
    assert sorted(hits(first, "boat")) == [(chat, 0, "user"), (chat, 1, "assistant")]  # once each
    assert hits(ConversationStore(tmp_path / DB_NAME), "lake") == [(chat, 0, "user")]
