"""The bridge: an async worker per engine ticket that turns its events into Textual messages.

The engine thread hands events to the ticket's asyncio queue (thread-safe); the worker runs on
the app's event loop, batches whatever has arrived and posts one ``EngineUpdate`` (a few a
second, so a fast GPU decode does not turn into one Markdown re-render per token). Widgets are
only ever touched by message handlers, never by the engine thread.

Drawing an update costs the UI thread a layout and a repaint of the screen, more on a large
terminal with every pane open; on a machine with few cores that time comes out of the engine's.
The Pacer stretches the wait between updates while the UI thread's CPU time is above UI_SHARE of
the wall time, so the app decodes within a few percent of the headless path at any size.

Updates reach the app in submission order: a ticket's worker posts nothing until the worker of
the ticket before it has posted its last update. Tickets run in that order on the engine, so
this costs no latency, and the screen can count conversation turns as they happen.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from textual.dom import DOMNode
from textual.worker import Worker

from engine import EngineQueue, Request, Ticket
from tui.app.messages import EngineUpdate

BATCH_S = 0.3  # at most ~3 UI updates a second per ticket; events in between are batched
MAX_BATCH_S = 0.8  # the longest the Pacer waits: text still arrives in readable steps
UI_SHARE = 0.06  # the UI thread's CPU time the Pacer aims to stay under, as a share of wall time


@dataclass
class Pacer:
    """The wait before a ticket's next update, from what the UI thread spent during the last:
    longer (x1.25, up to MAX_BATCH_S) while its CPU share is above UI_SHARE, shorter again
    (x0.8, down to BATCH_S) once it is under half of that."""

    wait_s: float = BATCH_S

    def next_wait(self, cpu_s: float, wall_s: float) -> float:
        share = cpu_s / wall_s if wall_s > 0 else 0.0
        if share > UI_SHARE:
            self.wait_s = min(self.wait_s * 1.25, MAX_BATCH_S)
        elif share < UI_SHARE / 2:
            self.wait_s = max(self.wait_s * 0.8, BATCH_S)
        return self.wait_s


class EngineBridge:
    def __init__(self, queue: EngineQueue) -> None:
        self.queue = queue
        self._previous: asyncio.Event | None = None  # set when the last ticket's worker ends
        self.pacer = Pacer()  # one for all tickets: the screen costs the same from reply to reply

    def submit(self, request: Request, target: DOMNode) -> Ticket:
        """Queue `request`; its events arrive at `target` as EngineUpdate messages."""
        ticket = self.queue.submit(request)
        self._pump(ticket, target)
        return ticket

    def _pump(self, ticket: Ticket, target: DOMNode) -> Worker[None]:
        previous, ended_event = self._previous, asyncio.Event()
        self._previous = ended_event

        async def pump() -> None:
            try:
                if previous is not None:
                    await previous.wait()
                ended = False
                while not ended:
                    events, ended = await ticket.drain()
                    target.post_message(EngineUpdate(ticket.id, events, finished=ended))
                    if not ended:
                        # the pump runs on the UI thread: its thread time is all the UI's work
                        cpu, wall = time.thread_time(), time.perf_counter()
                        await ticket.wait_unless_ended(self.pacer.wait_s)
                        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
                        self.pacer.next_wait(cpu, wall)
            finally:
                ended_event.set()

        return target.run_worker(
            pump(), name=f"engine-ticket-{ticket.id}", group="engine", exit_on_error=False
        )
