"""The user cache folder (prepared weights, the CPU dtype verdict) and atomic writes into it.

Everything here is a cache: losing it costs time, never data, so a failure to write is the
caller's one-line notice at most.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

ENV_CACHE_DIR = "LLAMA_TUI_CACHE_DIR"


def cache_dir() -> Path:
    """$LLAMA_TUI_CACHE_DIR, else the platform's user cache folder for llama-tui."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_cache_path("llama-tui")


def write_atomically(target: Path, write: Callable[[Path], object]) -> str | None:
    """``write(temp)`` beside ``target``, then rename it over ``target``: readers see the old
    file or the whole new one, never a half-written one. ``write`` raises OSError when it
    fails; this returns None, or why it failed (read-only folder, disk full) in a few words."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write(temp)
        os.replace(temp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        return f"{exc.strerror or exc} ({target.parent})"
    return None
