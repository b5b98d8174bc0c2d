"""Line mode's slash commands in process, over the tiny model: /help, the hint for an unknown
command, // for a literal slash, /continue, /file and /persona."""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from engine import ConversationStore, Persona
from engine.config import Profile
from engine.local import LocalBackend
from tui.cli.plain import run_chat
from tui.cli.slash import COMMANDS

PIRATE = Persona("pirate", "Talk like a pirate.", {"temperature": 0.0, "top_k": 3})


def chat(
    lines: list[str],
    profile: Profile,
    monkeypatch: pytest.MonkeyPatch,
    data_dir: Path | None = None,
) -> tuple[int, LocalBackend, list[dict[str, object]]]:
    backend = LocalBackend()
    out = io.StringIO()
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    monkeypatch.setattr("sys.stdout", out)
    args = argparse.Namespace(json=True, no_save=data_dir is None, data_dir=data_dir)
    code = run_chat(args, profile, backend=backend, personas={"pirate": PIRATE})
    return code, backend, [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture
def profile(tiny_profile: Profile) -> Profile:
    return replace(tiny_profile, context_length=256, max_new_tokens=4)


def test_help_lists_the_commands(
    profile: Profile, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, replies = chat(["/help"], profile, monkeypatch)
    err = capsys.readouterr().err.splitlines()
    assert code == 0 and replies == []
    assert [line.split()[2] for line in err[:-1]] == list(COMMANDS)
    assert err[1].startswith("llama-tui: note: /pin N ") and "trimming" in err[1]
    assert err[-1] == "llama-tui: note: a line starting with // sends a literal slash"


def test_unknown_commands_are_sent_after_a_hint_and_double_slash_sends_one(
    profile: Profile, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, backend, replies = chat(["/etc/hosts is a file", "//help"], profile, monkeypatch)
    assert code == 0 and len(replies) == 2
    session = backend.session
    assert session is not None
    assert [m.content for m in session.messages if m.role == "user"] == [
        "/etc/hosts is a file",
        "/help",
    ]
    [hint] = capsys.readouterr().err.splitlines()
    assert hint == (
        "llama-tui: note: /etc/hosts is not a command (/help lists them; // sends a slash): "
        "sent as typed"
    )


def test_continue_extends_the_reply(profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    code, backend, replies = chat(["hello there", "/continue"], profile, monkeypatch)
    assert code == 0 and len(replies) == 2
    first, rest = replies
    assert first["stop_reason"] == "length" and rest["computed_tokens"] == 1
    assert rest["token_ids"] == [*first["token_ids"], *rest["token_ids"][4:]]  # type: ignore[misc]
    assert len(rest["token_ids"]) == 8  # type: ignore[arg-type]
    session = backend.session
    assert session is not None and len(session.messages) == 2
    assert session.messages[1].content == rest["text"]


def test_file_goes_with_the_next_message_and_is_saved(
    profile: Profile,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("alpha\nbeta\n")
    data = tmp_path / "data"
    code, backend, _ = chat([f"/file {notes}", "sum it up"], profile, monkeypatch, data)
    assert code == 0
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("llama-tui: note: attached notes.txt · 11 B · ")
    assert line.endswith(" tokens: it goes with your next message")
    session = backend.session
    assert session is not None
    assert (
        session.messages[0].content
        == '<file name="notes.txt">\nalpha\nbeta\n\n</file>\n\nsum it up'
    )
    store = ConversationStore(data / "conversations.sqlite3")
    [conv] = store.list_conversations()
    user = store.messages(conv["id"])[0]
    [a] = store.attachments(user["id"])
    assert (a["path"], a["size"], a["text"]) == (str(notes.resolve()), 11, "alpha\nbeta\n")


def test_a_missing_file_is_one_line(
    profile: Profile,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    code, _, replies = chat([f"/file {tmp_path}/gone.txt", "hi"], profile, monkeypatch)
    assert code == 2 and replies == []
    [line] = capsys.readouterr().err.splitlines()
    assert line == f"llama-tui: error: {tmp_path}/gone.txt: no such file"


def test_persona_sets_the_system_prompt_and_is_saved(
    profile: Profile,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    lines = ["/persona", "/persona pirate", "ahoy", "/persona", "/persona nobody"]
    code, backend, replies = chat(lines, profile, monkeypatch, data)
    assert code == 2 and len(replies) == 1
    session = backend.session
    assert session is not None and session.system_prompt == "Talk like a pirate."
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "llama-tui: note:   pirate: Talk like a pirate.",
        "llama-tui: note: persona pirate: its system prompt, temperature = 0.0, top_k = 3",
        "llama-tui: note: * pirate: Talk like a pirate.",
        "llama-tui: error: no persona 'nobody' ([prompts.nobody]); personas: pirate",
    ]
    store = ConversationStore(data / "conversations.sqlite3")
    [conv] = store.list_conversations()
    assert conv["persona"] == "pirate"
    assert json.loads(conv["profile_json"])["system_prompt"] == "Talk like a pirate."
