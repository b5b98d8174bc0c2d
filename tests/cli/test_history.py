"""Saved chats: `chat --plain` writes each turn, `history` reads them back, kill -9 is safe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.store import DB_NAME, ConversationStore
from tests.cli.test_cli import ROOT, assert_one_line_error, run


def test_chat_saves_and_history_reads_back(tiny_gguf: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    flags = ["--model", str(tiny_gguf), "--temperature", "0", "--max-new-tokens", "4"]
    proc = run(
        ["chat", "--plain", "--json", *flags, "--data-dir", str(data)],
        tmp_path,
        stdin="hi there\nhow are you?\n",
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    replies = [r["text"] for r in records]
    assert len(replies) == 2
    assert all(r["timings"]["wall_s"] > 0 and "energy_j" in r for r in records)

    listed = run(["history", "list", "--data-dir", str(data)], tmp_path)
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    conv = line.split("\t")[0]
    assert conv.isdigit() and "4 msgs" in line and line.endswith("hi there")

    shown = run(["history", "show", conv, "--data-dir", str(data)], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "user: hi there" in shown.stdout and "user: how are you?" in shown.stdout

    exported = run(
        ["history", "export", conv, "--format", "json", "--data-dir", str(data)], tmp_path
    )
    assert exported.returncode == 0, exported.stderr
    doc = json.loads(exported.stdout)
    assert [(m["role"], m["content"]) for m in doc["messages"]] == [
        ("user", "hi there"),
        ("assistant", replies[0]),
        ("user", "how are you?"),
        ("assistant", replies[1]),
    ]
    saved = doc["messages"][1]["metrics"]
    assert saved["generated_tokens"] >= 1
    assert saved["timings"]["wall_s"] > 0 and saved["timings"]["decode_forward_s"] >= 0
    assert saved["energy_source"] in ("estimate", "rapl") and saved["energy_j"] >= 0
    assert doc["messages"][1]["stopped"] is False

    md = run(["history", "export", conv, "--data-dir", str(data)], tmp_path)
    assert md.returncode == 0 and md.stdout.startswith("# hi there\n")
    assert "## user\n\nhow are you?\n" in md.stdout

    assert_one_line_error(run(["history", "show", "999", "--data-dir", str(data)], tmp_path), "999")


def test_no_save_writes_nothing(tiny_gguf: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    flags = ["--model", str(tiny_gguf), "--max-new-tokens", "2", "--data-dir", str(data)]
    proc = run(["chat", "--plain", "--no-save", *flags], tmp_path, stdin="hi\n")
    assert proc.returncode == 0, proc.stderr
    assert not (data / DB_NAME).exists()


def test_a_corrupt_store_is_moved_aside_and_chat_and_history_go_on(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    garbage = b"garbage" * 1000
    (data / DB_NAME).write_bytes(garbage)
    listed = run(["history", "list", "--data-dir", str(data)], tmp_path)
    assert listed.returncode == 0 and listed.stdout == ""
    [line] = listed.stderr.splitlines()
    [kept] = data.glob(f"{DB_NAME}.broken-*")
    assert kept.read_bytes() == garbage
    assert line == (
        f"llama-tui: note: {data / DB_NAME} was broken (file is not a database): moved aside to"
        f" {kept} (kept, not deleted); a new empty store was created"
    )
    (data / DB_NAME).write_bytes(garbage)  # broken again: chat moves it too, then saves
    flags = ["--model", str(tiny_gguf), "--max-new-tokens", "2", "--data-dir", str(data)]
    proc = run(["chat", "--plain", *flags], tmp_path, stdin="hi\n")
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stderr.splitlines()
    assert "was broken" in line and "moved aside to" in line and "Traceback" not in proc.stderr
    assert len(list(data.glob(f"{DB_NAME}.broken-*"))) == 2
    store = ConversationStore(data / DB_NAME)
    [conv] = store.list_conversations()
    assert conv["message_count"] == 2 and conv["title"] == "hi"


@pytest.mark.slow
def test_kill_9_keeps_the_streamed_reply(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    args = ["chat", "--plain", "--data-dir", str(data), "--max-new-tokens", "400"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui.cli.main", *args, "--temperature", "0.8", "--seed", "1"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    printed = bytearray()
    first = threading.Event()

    def read(fd: int) -> None:
        while chunk := os.read(fd, 4096):
            printed.extend(chunk)
            first.set()

    reader = threading.Thread(target=read, args=(proc.stdout.fileno(),), daemon=True)
    reader.start()
    prompt = "Write a very long story about a dragon who learns to bake bread."
    proc.stdin.write(prompt.encode() + b"\n")
    proc.stdin.flush()
    try:
        assert first.wait(120), "no reply streamed"
        time.sleep(1.3)
        early = bytes(printed)  # what was on screen more than 1 s before the kill
        time.sleep(1.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    shown = bytes(printed).decode("utf-8", "replace")

    store = ConversationStore(data / DB_NAME)
    [conv] = store.list_conversations()
    msgs = store.messages(conv["id"])
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[0]["content"] == prompt
    saved = msgs[1]["content"]
    assert saved and shown.startswith(saved)
    assert len(saved.encode()) >= len(early), "more than the last second of the reply was lost"


def test_the_app_takes_data_dir_and_no_save(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tui.cli.main import app_from_args, build_parser

    monkeypatch.chdir(tmp_path)  # no llama-tui.toml here: built-in defaults
    flags = ["chat", "--model", str(tiny_gguf)]
    args = build_parser().parse_args([*flags, "--data-dir", str(tmp_path / "d"), "--no-save"])
    app = app_from_args(args)
    assert app.data_dir == tmp_path / "d" and app.save is False
    assert app_from_args(build_parser().parse_args(flags)).save is True


def test_history_list_marks_forks(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / DB_NAME)
    conv = store.new_conversation("original", {})
    store.add_message(conv, "user", "hi")
    fork = store.fork(conv, 0)
    store.close()
    listed = run(["history", "list", "--data-dir", str(tmp_path)], tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split("\t")[0]: line for line in listed.stdout.splitlines()}
    assert lines[str(fork)].endswith(f"original\t↳ fork of #{conv}")
    assert lines[str(conv)].endswith("\toriginal")
