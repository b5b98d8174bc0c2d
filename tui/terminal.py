"""The terminal a front end runs in, when it goes away (shared by the app and line mode)."""

from __future__ import annotations

import os
import sys


def mute_lost_terminal() -> None:
    """After a hang-up: stdout and stderr that were the terminal now write to /dev/null (a
    write to a closed terminal fails with EIO; pipes and files keep their output)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            if os.isatty(fd):
                os.dup2(devnull, fd)
        except (OSError, ValueError):  # no real file behind it (a test's StringIO)
            pass
    os.close(devnull)
