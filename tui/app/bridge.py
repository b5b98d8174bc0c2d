"""The bridge: an async worker per engine ticket that turns its events into Textual messages.

The engine thread hands events to the ticket's asyncio queue (thread-safe); the worker runs on
the app's event loop, batches whatever has arrived and posts one ``EngineUpdate`` (at most
~7 a second, so a fast GPU decode does not turn into one Markdown re-render per token). Widgets are
only ever touched by message handlers, never by the engine thread.

Updates reach the app in submission order: a ticket's worker posts nothing until the worker of
the ticket before it has posted its last update. Tickets run in that order on the engine, so
this costs no latency, and the screen can count conversation turns as they happen.
"""

from __future__ import annotations

import asyncio

from textual.dom import DOMNode
from textual.worker import Worker

from engine import EngineQueue, Request, Ticket
from tui.app.messages import EngineUpdate

BATCH_S = 0.3  # at most ~3 UI updates a second per ticket; events in between are batched


class EngineBridge:
    def __init__(self, queue: EngineQueue) -> None:
        self.queue = queue
        self._previous: asyncio.Event | None = None  # set when the last ticket's worker ends

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
                        await asyncio.sleep(BATCH_S)
            finally:
                ended_event.set()

        return target.run_worker(
            pump(), name=f"engine-ticket-{ticket.id}", group="engine", exit_on_error=False
        )
