"""Soak: 1,000 `chat --plain --json` turns in one process on the tiny model in a small context
(trims every few turns): memory flat after warm-up, file descriptors constant, the store growing
linearly with its messages, and every turn a valid JSON record."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil

from engine.store import DB_NAME
from tests.cli.test_cli import ROOT

TURNS = 1000
WARM = 200  # turns before the baseline is taken


def store_bytes(path: Path) -> tuple[int, int]:
    """(messages, bytes of the pages in use) as another process sees the store."""
    db = sqlite3.connect(path)
    try:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        count = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    finally:
        db.close()
    return count, (pages - free) * size


def test_a_thousand_turns_keep_memory_fds_and_the_store_in_line(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    flags = ["--model", str(tiny_gguf), "--context-length", "96", "--max-new-tokens", "3"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tui.cli.main",
            "chat",
            "--plain",
            "--json",
            *flags,
            "--temperature",
            "0",
            "--data-dir",
            str(data),
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    assert proc.stdin is not None and proc.stdout is not None
    me = psutil.Process(proc.pid)
    fd_dir = Path(f"/proc/{proc.pid}/fd")
    samples: dict[int, tuple[int, int]] = {}
    sizes: dict[int, tuple[int, int]] = {}
    trims = 0
    try:
        for i in range(1, TURNS + 1):
            proc.stdin.write(f"turn {i} says a few words\n")
            proc.stdin.flush()
            record = json.loads(proc.stdout.readline())  # every turn: one valid JSON object
            assert record["generated_tokens"] >= 1 and record["context_tokens"] <= 96
            trims += bool(record.get("notice"))
            if i >= WARM and i % 100 == 0:
                samples[i] = (me.memory_info().rss, len(os.listdir(fd_dir)))
            if i in (TURNS // 2, TURNS):
                sizes[i] = store_bytes(data / DB_NAME)
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert trims >= TURNS // 10  # the small context trims every few turns
    (rss0, fds0), (rss1, fds1) = samples[WARM], samples[TURNS]
    assert rss1 < rss0 * 1.05, f"RSS grew from {rss0 >> 20} to {rss1 >> 20} MiB"
    fds = [n for _, n in samples.values()]  # every 100 turns after warm-up
    assert max(fds) - min(fds) <= 1 and fds1 <= fds0 + 1, fds  # a leak per turn would be 100s
    (n0, bytes0), (n1, bytes1) = sizes[TURNS // 2], sizes[TURNS]
    assert n0 == TURNS and n1 == 2 * TURNS  # every message saved
    per0, per1 = bytes0 / n0, bytes1 / n1
    assert 0.8 < per1 / per0 < 1.25, (per0, per1)  # linear: bytes per message stay the same
