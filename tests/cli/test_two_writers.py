"""Two `chat --plain` processes on one store at once (two SSH sessions): every message of both
is kept, in order, with no "database is locked" (busy timeout, one-statement writes, retries)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from engine.store import DB_NAME
from tests.cli.test_cli import ROOT

TURNS = 25


def test_two_processes_writing_one_store_keep_every_message(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    flags = ["--model", str(tiny_gguf), "--max-new-tokens", "3", "--temperature", "0"]
    procs = []
    for name in ("a", "b"):
        lines = "".join(f"{name} turn {i}\n" for i in range(TURNS))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tui.cli.main",
                "chat",
                "--plain",
                "--json",
                *flags,
                "--data-dir",
                str(data),
            ],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
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
