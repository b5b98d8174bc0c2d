"""Signals in line mode and `serve`: how a reply is stopped and the chat left cleanly.

Line mode: Ctrl-C stops the running reply; a second Ctrl-C within TWICE_S quits (at the prompt
too, where one Ctrl-C only says so). SIGTERM and SIGHUP (the terminal or the SSH session closed)
cancel the running reply, let it end as a stopped reply with its figures (saved as such), then
end the chat; after SIGHUP a terminal that is gone is written to no more. `run_chat` closes the
store on the way out (engine.Conversation.close).
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

from engine import EngineQueue
from tui.terminal import mute_lost_terminal

TWICE_S = 2.0  # a second Ctrl-C this soon after the first quits
ENDING = (signal.SIGTERM, signal.SIGHUP)


class Hangup(BaseException):
    """SIGTERM or SIGHUP arrived while no reply was running: leave the chat now."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stopper:
    """The signal handlers of one `chat --plain`, installed while it runs (main thread only)."""

    def __init__(self, queue: EngineQueue, say: Any) -> None:
        self.queue, self.say = queue, say  # say(text): one line on stderr
        self.streaming = False  # a reply is running: signals cancel it instead of raising
        self.signum: int | None = None  # SIGTERM or SIGHUP arrived: end after this reply
        self.last_int = -TWICE_S
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Stopper:
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be set from the main thread: the defaults stay
        for signum in (signal.SIGINT, *ENDING):
            handler = self.on_int if signum == signal.SIGINT else self.on_end
            self._previous[signum] = signal.signal(signum, handler)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def on_int(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        twice, self.last_int = now - self.last_int < TWICE_S, now
        if twice:
            raise KeyboardInterrupt
        if self.streaming:
            self.queue.cancel_all()  # the reply ends " [stopped]" and is saved as stopped
        else:
            self.say("Ctrl-C again quits (so does Ctrl-D)")

    def on_end(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if signum == signal.SIGHUP:
            mute_lost_terminal()
        self.queue.cancel_all()
        if not self.streaming:
            raise Hangup(signum)
