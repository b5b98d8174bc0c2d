"""Two processes on one store at once (two SSH sessions: chat --plain twice, or the app and
chat --plain): every message of both is kept, in order, with no "database is locked" (busy
timeout, one-statement writes, retries)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from engine.store import DB_NAME
from tests.cli.test_cli import ROOT

TURNS = 25


def plain_chat(tmp_path: Path, env: dict[str, str], flags: list[str]) -> subprocess.Popen[str]:
    """`chat --plain --json` on the test's store, its pipes open for the test to feed."""
    argv = ["chat", "--plain", "--json", *flags, "--data-dir", str(tmp_path / "data")]
    return subprocess.Popen(
        [sys.executable, "-m", "tui.cli.main", *argv],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_writing_one_store_keep_every_message(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    flags = ["--model", str(tiny_gguf), "--max-new-tokens", "3", "--temperature", "0"]
    procs = []
    for name in ("a", "b"):
        lines = "".join(f"{name} turn {i}\n" for i in range(TURNS))
        proc = plain_chat(tmp_path, env, flags)
        procs.append((name, proc, lines))
    for _, proc, lines in procs:  # both start before either is fed: their turns interleave
        assert proc.stdin is not None
        proc.stdin.write(lines)
        proc.stdin.flush()
    for _, proc, _ in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert len(out.splitlines()) == TURNS  # one JSON line per turn
        assert "locked" not in err and "not saved" not in err, err
    db = sqlite3.connect(data / DB_NAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    convs = db.execute("SELECT id, title FROM conversations ORDER BY title").fetchall()
    assert [title for _, title in convs] == ["a turn 0", "b turn 0"]
    for (conv, _), name in zip(convs, "ab", strict=True):
        rows = db.execute(
            "SELECT seq, role, content FROM messages WHERE conversation_id = ? ORDER BY seq",
            (conv,),
        ).fetchall()
        assert [seq for seq, _, _ in rows] == list(range(2 * TURNS))
        assert [c for _, r, c in rows if r == "user"] == [f"{name} turn {i}" for i in range(TURNS)]
        assert all(c for _, r, c in rows if r == "assistant")


def conversation_rows(data: Path, title: str) -> list[tuple[int, str, str]]:
    db = sqlite3.connect(data / DB_NAME, timeout=5)
    try:
        return db.execute(
            "SELECT m.seq, m.role, m.content FROM messages m JOIN conversations c"
            " ON c.id = m.conversation_id WHERE c.title = ? ORDER BY m.seq",
            (title,),
        ).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def test_the_app_and_chat_plain_on_one_store_keep_every_message(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    """The app (on a pseudo-terminal, typed into) and a `chat --plain` process at once."""
    import fcntl
    import struct
    import termios
    import time

    from tests.cli.test_signals import Reader

    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    flags = ["--model", str(tiny_gguf), "--max-new-tokens", "3", "--temperature", "0"]
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    app = subprocess.Popen(
        [sys.executable, "-m", "tui.cli.main", "chat", *flags, "--data-dir", str(data)],
        cwd=tmp_path,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    screen = Reader(master)
    plain = plain_chat(tmp_path, env, flags)
    app_turns = 8
    try:
        screen.wait_for(b"Metrics", timeout=120)  # the app is drawn
        assert plain.stdin is not None
        plain.stdin.write("".join(f"plain turn {i}\n" for i in range(TURNS)))
        plain.stdin.flush()  # its turns run while the app's do; communicate() closes stdin
        for i in range(app_turns):  # one prompt at a time, each once the last reply is saved
            os.write(master, f"app turn {i}\r".encode())
            end = time.monotonic() + 60
            while len(conversation_rows(data, "app turn 0")) < 2 * (i + 1):
                assert time.monotonic() < end, f"app turn {i} was not saved"
                time.sleep(0.1)
        out, err = plain.communicate(timeout=240)
        assert plain.returncode == 0, err
        assert len(out.splitlines()) == TURNS and "locked" not in err and "not saved" not in err
    finally:
        app.terminate()
        app.wait(10)
        os.close(master)
    db = sqlite3.connect(data / DB_NAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    rows = conversation_rows(data, "app turn 0")
    assert [seq for seq, _, _ in rows] == list(range(2 * app_turns))
    assert [c for _, r, c in rows if r == "user"] == [f"app turn {i}" for i in range(app_turns)]
    rows = conversation_rows(data, "plain turn 0")
    assert [seq for seq, _, _ in rows] == list(range(2 * TURNS))
    assert [c for _, r, c in rows if r == "user"] == [f"plain turn {i}" for i in range(TURNS)]
