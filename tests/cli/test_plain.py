"""Line mode in process, over the tiny model: `/pin N` and `/unpin N` reach the engine through
the controller, and a pinned early message survives the trims of a small context."""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config import Profile
from engine.local import LocalBackend
from tui.cli.main import main
from tui.cli.plain import run_chat

FILLER = [f"filler turn {i} with a few more words" for i in range(14)]


def chat(
    lines: list[str], profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, LocalBackend, list[dict[str, object]]]:
    """Run `chat --plain --json --no-save` on these stdin lines; the backend is kept to look at."""
    backend = LocalBackend()
    out = io.StringIO()
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    monkeypatch.setattr("sys.stdout", out)
    args = argparse.Namespace(json=True, no_save=True, data_dir=None)
    code = run_chat(args, profile, backend=backend)
    return code, backend, [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture
def profile(tiny_profile: Profile) -> Profile:
    return replace(tiny_profile, context_length=160, max_new_tokens=8)


def test_a_pinned_message_survives_trims_and_unpinning_lets_it_go(
    profile: Profile, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ["remember: the code is 42", "/pin 1", *FILLER]
    code, backend, replies = chat(lines, profile, monkeypatch)
    assert code == 0 and len(replies) == 1 + len(FILLER)
    session = backend.session
    assert session is not None and session.pinned == {0}
    assert (
        session.context_start > 2 and replies[-1]["dropped_messages"] == session.context_start - 1
    )
    assert session.visible(session.messages)[0].content == "remember: the code is 42"
    assert (
        "llama-tui: note: message 1 pinned: trimming keeps it in context" in capsys.readouterr().err
    )

    code, backend, replies = chat([*lines, "/unpin 1", "one more turn"], profile, monkeypatch)
    session = backend.session
    assert code == 0 and session is not None and session.pinned == set()
    assert session.visible(session.messages)[0].content != "remember: the code is 42"
    assert replies[-1]["dropped_messages"] == session.context_start
    assert "llama-tui: note: message 1 unpinned" in capsys.readouterr().err


def test_a_bad_pin_is_a_one_line_error(
    profile: Profile, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, replies = chat(["hi", "/pin 3"], profile, monkeypatch)
    assert code == 2 and len(replies) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        "llama-tui: error: there is no message 3: this conversation has 2 messages, numbered from 1"
    )
    code, _, _ = chat(["/pin x"], profile, monkeypatch)
    assert code == 2 and "usage: /pin N" in capsys.readouterr().err


def test_no_command_is_chat_with_chat_flags(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `llama-tui --no-save --json` once stopped at the top-level parser ("unrecognized
    # arguments") before it was read as `chat`; stdin is no terminal here, so line mode
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    flags = ["--model", str(tiny_gguf), "--dtype", "float32", "--max-new-tokens", "3"]
    assert main(["--no-save", "--json", *flags]) == 0
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(replies) == 1 and 1 <= replies[0]["generated_tokens"] <= 3
