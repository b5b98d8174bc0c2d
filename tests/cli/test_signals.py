"""Real signals on real processes: `chat --plain` on a pipe and the app under a pseudo-terminal.

SIGTERM and SIGHUP mid-reply stop it, save it marked stopped and close the store, the process
gone within 2 s; Ctrl-C stops a reply and a second one quits. Each run uses the tiny
random-weight model with a reply long enough (thousands of tokens) to be interrupted.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.store import DB_NAME
from tests.cli.test_cli import ROOT

EXIT_S = 2.0
LONG = ["--max-new-tokens", "4000", "--context-length", "4096", "--temperature", "1.0"]
PROMPT = "tell me everything"


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


class Reader:
    """Everything a pipe or terminal gives, collected by a thread."""

    def __init__(self, fd: int) -> None:
        self.data = bytearray()
        self.fd = fd
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # a pty whose other side closed: EIO
                return
            if not chunk:
                return
            self.data.extend(chunk)

    def wait_for(self, needle: bytes, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while needle not in self.data:
            assert time.monotonic() < end, f"{needle!r} never came: {bytes(self.data)[-400:]!r}"
            time.sleep(0.02)

    def wait_bytes(self, n: int, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while len(self.data) < n:
            assert time.monotonic() < end, "nothing streamed"
            time.sleep(0.02)


def exited_within(proc: subprocess.Popen[bytes], seconds: float) -> tuple[int, float]:
    t0 = time.monotonic()
    try:
        code = proc.wait(seconds + 3)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, time.monotonic() - t0


def saved_rows(data: Path) -> list[tuple[str, str, int]]:
    """The store as another process reads it, after an integrity check."""
    db = sqlite3.connect(data / DB_NAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = db.execute("SELECT role, content, stopped FROM messages ORDER BY id").fetchall()
    db.close()
    return rows


def plain_chat(tiny_gguf: Path, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Reader]:
    args = ["chat", "--plain", "--model", str(tiny_gguf), *LONG]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui.cli.main", *args, "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path,
        env=env(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    return proc, Reader(proc.stdout.fileno())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_reply_saves_it_stopped_and_exits(
    tiny_gguf: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    proc, out = plain_chat(tiny_gguf, tmp_path)
    assert proc.stdin is not None
    proc.stdin.write(f"{PROMPT}\n".encode())
    proc.stdin.flush()
    out.wait_bytes(200)  # the reply is streaming
    proc.send_signal(sig)
    code, took = exited_within(proc, EXIT_S)
    assert code == 128 + sig and took < EXIT_S, (code, took)
    out.thread.join(5)
    shown = bytes(out.data).decode("utf-8", "replace")
    assert shown.endswith(" [stopped]\n")
    [(role, text, stopped), (role2, reply, stopped2)] = saved_rows(tmp_path / "data")
    assert (role, text, stopped) == ("user", PROMPT, 0)
    assert role2 == "assistant" and stopped2 == 1
    assert reply == shown.removesuffix(" [stopped]\n")  # every streamed byte kept
    assert "Traceback" not in (proc.stderr.read().decode() if proc.stderr else "")


def test_sigterm_at_the_prompt_closes_the_store_and_exits(tiny_gguf: Path, tmp_path: Path) -> None:
    proc, out = plain_chat(tiny_gguf, tmp_path)
    assert proc.stdin is not None
    proc.stdin.write(b"hi\n")  # a long reply: stop it with Ctrl-C ...
    proc.stdin.flush()
    out.wait_bytes(50)
    proc.send_signal(signal.SIGINT)
    out.wait_for(b" [stopped]\n", timeout=10)
    time.sleep(EXIT_S + 0.2)  # ... then wait: a later Ctrl-C is a first one again
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)  # idle, blocked reading stdin
    code, took = exited_within(proc, EXIT_S)
    assert code == 128 + signal.SIGTERM and took < EXIT_S
    rows = saved_rows(tmp_path / "data")
    assert [(r[0], r[2]) for r in rows] == [("user", 0), ("assistant", 1)]
    assert not Path(f"{tmp_path / 'data' / DB_NAME}-wal").exists()  # closed: checkpointed


def test_ctrl_c_stops_the_reply_and_a_second_one_quits(tiny_gguf: Path, tmp_path: Path) -> None:
    proc, out = plain_chat(tiny_gguf, tmp_path)
    assert proc.stdin is not None and proc.stderr is not None
    err = Reader(proc.stderr.fileno())
    proc.stdin.write(f"{PROMPT}\n".encode())
    proc.stdin.flush()
    out.wait_bytes(200)
    proc.send_signal(signal.SIGINT)
    out.wait_for(b" [stopped]\n", timeout=5)
    assert proc.poll() is None  # one Ctrl-C only stops the reply
    proc.send_signal(signal.SIGINT)
    code, took = exited_within(proc, EXIT_S)
    assert code == 130 and took < EXIT_S
    err.thread.join(5)
    assert "Traceback" not in err.data.decode()
    [(_, _, user_stopped), (role, reply, stopped)] = saved_rows(tmp_path / "data")
    assert role == "assistant" and stopped == 1 and user_stopped == 0
    assert reply == bytes(out.data).decode("utf-8", "replace").removesuffix(" [stopped]\n")


def app_under_pty(tiny_gguf: Path, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Reader]:
    """`llama-tui chat` (the Textual app) on a pseudo-terminal that is its controlling
    terminal, 100x30: closing the master side is a real hang-up."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    args = ["chat", "--model", str(tiny_gguf), *LONG, "--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui.cli.main", *args],
        cwd=tmp_path,
        env={**env(tmp_path), "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=controlling_terminal,
    )
    os.close(slave)
    return proc, master, Reader(master)


def streamed_reply(data: Path, timeout: float = 120) -> str:
    """Wait until the app has saved part of the reply (the first token's write)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (data / DB_NAME).exists():
            try:
                rows = saved_rows(data)
            except sqlite3.OperationalError:  # the app is creating it
                rows = []
            if len(rows) == 2 and rows[1][1]:
                return rows[1][1]
        time.sleep(0.1)
    raise AssertionError("the app saved no reply")


@pytest.mark.parametrize("how", ["SIGTERM", "hang-up"])
def test_the_app_saves_the_stopped_reply_on_sigterm_and_on_a_hang_up(
    tiny_gguf: Path, tmp_path: Path, how: str
) -> None:
    proc, master, screen = app_under_pty(tiny_gguf, tmp_path)
    try:
        screen.wait_for(b"Metrics", timeout=120)  # the app is drawn
        time.sleep(0.5)
        os.write(master, f"{PROMPT}\r".encode())
        early = streamed_reply(tmp_path / "data")
        time.sleep(1.5)  # streaming on: more than the first save
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            os.close(master)  # the terminal goes away: the kernel sends SIGHUP
        code, took = exited_within(proc, EXIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        if how == "SIGTERM":
            os.close(master)
    sig = signal.SIGTERM if how == "SIGTERM" else signal.SIGHUP
    assert code == 128 + sig and took < EXIT_S, (code, took)
    [(role, text, _), (role2, reply, stopped)] = saved_rows(tmp_path / "data")
    assert (role, text, role2, stopped) == ("user", PROMPT, "assistant", 1)
    assert reply.startswith(early) and len(reply) > len(early)  # the last words kept too
