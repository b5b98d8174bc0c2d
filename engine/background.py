"""Engine work that runs in daemon threads beside the chat (the compiled decode step's build).

Kept free of torch, so a front end can ask at exit whether such work is still running without
importing it: a daemon thread inside native code (inductor's C++ build) when the interpreter
shuts down aborts the process ("terminate called without an active exception", exit 134).
The command line's entry point then leaves with ``os._exit`` once its output is flushed.
"""

from __future__ import annotations

import threading

_RUNNING: set[threading.Thread] = set()


def start(target: threading.Thread) -> None:
    """Start a daemon thread and remember it until it ends (its target must call ``done``)."""
    _RUNNING.add(target)
    target.start()


def done(thread: threading.Thread | None = None) -> None:
    """Forget the calling (or the given) thread: its work is over."""
    _RUNNING.discard(thread or threading.current_thread())


def background_busy() -> bool:
    """True while background engine work is still running."""
    return any(t.is_alive() for t in _RUNNING)
