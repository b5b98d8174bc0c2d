"""`history search`, `history import` and `history export --code` as the user runs them (real
subprocesses on a store the test fills through the engine's store)."""

from __future__ import annotations

import json
from pathlib import Path

from engine.store import DB_NAME, ConversationStore
from tests.cli.test_cli import assert_one_line_error, run
from tests.engine.test_search import THREE_BLOCKS


def filled(data: Path) -> tuple[int, int]:
    store = ConversationStore(data / DB_NAME)
    a = store.new_conversation("walrus talk", {})
    store.add_message(a, "user", "tell me about the walrus")
    store.add_message(a, "assistant", "The walrus is a large\nflippered marine mammal.")
    b = store.new_conversation("code", {})
    store.add_message(b, "user", "some code please")
    store.add_message(b, "assistant", THREE_BLOCKS)
    store.add_message(b, "user", "```ignored\nuser code is not a reply's\n```")
    store.add_message(b, "assistant", "one more:\n```sql\nselect 1;\n```")
    store.close()
    return a, b


def test_search_prints_one_hit_per_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a, _ = filled(data)
    proc = run(["history", "search", "walrus", "--data-dir", str(data)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{a}\t1\tuser\ttell me about the [walrus]",
        f"{a}\t2\tassistant\tThe [walrus] is a large flippered marine mammal.",
    ]
    none = run(["history", "search", "narwhal", "--data-dir", str(data)], tmp_path)
    assert none.returncode == 0 and none.stdout == ""


def test_export_code_writes_the_replies_blocks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _, b = filled(data)
    proc = run(["history", "export", str(b), "--code", "--data-dir", str(data)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        "def add(a, b):\n    return a + b\n\npython add.py\n\n"
        "key = 1\n```not a fence end```\n\nselect 1;\n"
    )


def test_import_round_trips_an_export(tmp_path: Path) -> None:
    data = tmp_path / "data"
    a, _ = filled(data)
    exported = run(
        ["history", "export", str(a), "--format", "json", "--data-dir", str(data)], tmp_path
    )
    path = tmp_path / "walrus.json"
    path.write_text(exported.stdout)
    proc = run(["history", "import", str(path), "--data-dir", str(data)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"imported {path} as conversation #3 (2 messages)\n"
    again = run(["history", "export", "3", "--format", "json", "--data-dir", str(data)], tmp_path)
    first, second = json.loads(exported.stdout), json.loads(again.stdout)
    assert (first.pop("id"), second.pop("id")) == (a, 3) and first == second


def test_import_refuses_a_bad_file_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bad = tmp_path / "bad.json"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}, "oops"]}')
    proc = run(["history", "import", str(bad), "--data-dir", str(data)], tmp_path)
    assert_one_line_error(proc, f"{bad}: messages[2]: must be an object with role and content")
    assert not (data / DB_NAME).exists()  # nothing was written, not even an empty store
