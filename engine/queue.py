"""EngineQueue: one engine thread owns torch and the model; requests run in submission order.

``submit`` may be called from any thread. It returns a ``Ticket`` whose events arrive in order:
``Started`` when the engine thread picks it up, then the backend's events (``LoadProgress`` …
``ModelReady``; ``TurnStarted``, ``PrefillDone``, ``TokenEvent`` … ``Done``; ``Pinned``),
``MemoryStats`` along the way, or ``Failed``. Iterate a ticket with ``for`` in a plain thread
or ``async for`` in the asyncio loop that submitted it; the engine thread never waits for a
consumer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace

from engine.backend import Backend, GenerationRequest, ModelInfo, TokenizeRequest
from engine.chat_format import Message
from engine.config import Profile
from engine.cpu_load import Stamp, other_load
from engine.energy import EnergyMeter, EnergyReading, open_meter
from engine.errors import ServerError, UserError
from engine.events import Done, Event, Failed, LoadProgress, TokenEvent
from engine.metrics import gpu_memory_bytes, rss_bytes

log = logging.getLogger(__name__)

MEMORY_EVERY_S = 0.5  # while streaming, a MemoryStats event at most this often


@dataclass(frozen=True)
class LoadRequest:
    profile: Profile  # becomes the active profile; weights load only if they changed


@dataclass(frozen=True)
class ClearRequest:
    """Start a new conversation (runs in order, after what was submitted before it)."""

    messages: tuple[Message, ...] = ()  # go on with these (a saved conversation) instead


@dataclass(frozen=True)
class PinRequest:
    """Keep message `index` in context whatever trimming drops, or (pinned=False) let it go."""

    index: int  # into the conversation's messages, 0 = the first
    pinned: bool = True


Request = GenerationRequest | LoadRequest | ClearRequest | PinRequest | TokenizeRequest


@dataclass(frozen=True)
class Started:
    request_id: int  # the ticket left the pending queue and is running now


@dataclass(frozen=True)
class ModelReady:
    profile: str
    info: ModelInfo


@dataclass(frozen=True)
class MemoryStats:
    rss_bytes: int
    gpu_allocated_bytes: int | None  # None without CUDA
    gpu_reserved_bytes: int | None


QueueEvent = Event | Started | ModelReady | MemoryStats
_END = object()  # closes a ticket's stream


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def memory_stats() -> MemoryStats:
    gpu = gpu_memory_bytes()
    return MemoryStats(rss_bytes(), gpu[0] if gpu else None, gpu[1] if gpu else None)


class Ticket:
    """One submitted request: its id, its events, and cancel."""

    def __init__(
        self,
        request_id: int,
        request: Request,
        loop: asyncio.AbstractEventLoop | None,
        load_mark: float = 0.0,
    ):
        self.id = request_id
        self.request = request
        self.submitted = time.perf_counter()
        self.load_mark = load_mark  # the queue's load seconds so far, when it was submitted
        self.cancel_event = threading.Event()
        self.state = "pending"  # pending -> running -> finished
        self._loop = loop
        self._sync: queue.SimpleQueue[object] = queue.SimpleQueue()
        # asyncio side: the engine thread appends here and wakes the loop only when a consumer
        # is waiting, so a consumer that batches (sleeps between reads) costs no wake-ups
        self._items: deque[object] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._waiter_lock = threading.Lock()
        self._ended = asyncio.Event()  # set on the loop once the engine has put the end

    def cancel(self) -> None:
        """Stop it: a pending ticket never runs; a running one stops within one decode step."""
        self.cancel_event.set()

    def _put(self, item: object) -> None:  # engine thread
        if self._loop is None:
            self._sync.put(item)
            return
        with self._waiter_lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        try:
            if waiter is not None:
                self._loop.call_soon_threadsafe(_wake, waiter)
            if item is _END:
                self._loop.call_soon_threadsafe(self._ended.set)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            pass

    async def _take(self) -> list[object]:
        """Everything that arrived, waiting until there is at least one item."""
        while True:
            with self._waiter_lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return items
                assert self._loop is not None
                waiter = self._waiter = self._loop.create_future()
            await waiter

    def __iter__(self) -> Iterator[QueueEvent]:
        if self._loop is not None:
            raise RuntimeError("this ticket was submitted from an event loop: use `async for`")
        while (item := self._sync.get()) is not _END:
            yield item  # type: ignore[misc]

    async def __aiter__(self) -> AsyncIterator[QueueEvent]:
        ended = False
        while not ended:
            events, ended = await self.drain()
            for event in events:
                yield event

    async def wait_unless_ended(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the stream ends meanwhile (a consumer that batches then
        draws the end at once, not up to a batch later)."""
        try:
            await asyncio.wait_for(self._ended.wait(), seconds)
        except TimeoutError:
            pass

    async def drain(self) -> tuple[list[QueueEvent], bool]:
        """Every event that has arrived (waits for at least one), and whether the stream ended."""
        if self._loop is None:
            raise RuntimeError("this ticket was submitted outside an event loop: use `for`")
        items = await self._take()
        ended = items[-1] is _END
        if ended:
            items.pop()
        return items, ended  # type: ignore[return-value]


@dataclass(frozen=True)
class ReplyStart:
    """What the queue reads when a reply starts, to say where its time and energy went."""

    submitted: float  # perf_counter() at submit
    started: float  # perf_counter() now
    load_s: float  # model loads that ran while the reply waited
    stamp: Stamp  # machine and process CPU time
    energy: tuple[float, ...]  # the meter's counters

    @classmethod
    def now(cls, ticket: Ticket, load_s_total: float, meter: EnergyMeter | None) -> ReplyStart:
        energy = meter.read() if meter is not None else ()
        load = load_s_total - ticket.load_mark
        return cls(ticket.submitted, time.perf_counter(), load, Stamp.now(), energy)


def measured(
    done: Done, start: ReplyStart, meter: EnergyMeter | None, profile: Profile | None
) -> Done:
    """Done with the queue's figures: the wait before the engine took it, the wall time, other
    processes' CPU share, the energy (and its source) and the cost at the profile's prices."""
    now = time.perf_counter()
    waited = start.started - start.submitted
    timings = replace(
        done.timings,
        queue_wait_s=max(waited - start.load_s, 0.0),
        load_s=start.load_s,
        wall_s=now - start.submitted,
        other_cpu_share=other_load(start.stamp, Stamp.now()),
        done_at=now,
    )
    energy = None
    if meter is not None:
        energy = EnergyReading(meter.joules(start.energy, meter.read()), meter.source)
    m = done.metrics
    cost = None
    if profile is not None and (
        profile.cost_per_1k_input_tokens or profile.cost_per_1k_output_tokens
    ):
        cost = (
            m.prompt_tokens * profile.cost_per_1k_input_tokens
            + m.generated_tokens * profile.cost_per_1k_output_tokens
        ) / 1000
    return replace(done, timings=timings, energy=energy, cost=cost)


class EngineQueue:
    def __init__(self, backend: Backend, name: str = "llama-engine") -> None:
        self.backend = backend
        self._inbox: queue.SimpleQueue[Ticket | None] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: list[Ticket] = []
        self.running: Ticket | None = None
        self._closed = False
        self.load_s_total = 0.0  # seconds spent loading models (a reply's load_s comes from it)
        self.profile: Profile | None = None  # the last profile loaded (prices, power figure)
        self.meter: EnergyMeter | None = None  # for the model's device, opened at each load
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> Ticket:
        """Queue `request` behind the others; safe from any thread."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine queue is closed")
            ticket = Ticket(next(self._ids), request, loop, self.load_s_total)
            self._pending.append(ticket)
        self._inbox.put(ticket)
        return ticket

    @property
    def pending(self) -> list[Ticket]:
        with self._lock:
            return list(self._pending)

    def cancel_running(self) -> bool:
        """Cancel the running ticket, if any; True if there was one."""
        ticket = self.running
        if ticket is None:
            return False
        ticket.cancel()
        return True

    def cancel_all(self) -> None:
        for ticket in self.pending:
            ticket.cancel()
        self.cancel_running()

    def close(self, timeout: float = 5.0) -> None:
        """Cancel everything and stop the engine thread."""
        with self._lock:
            self._closed = True
        self.cancel_all()
        self._inbox.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (ticket := self._inbox.get()) is not None:
            with self._lock:
                self._pending.remove(ticket)
            self.running = ticket
            ticket.state = "running"
            try:
                if ticket.cancel_event.is_set():
                    ticket._put(Done("", [], "cancelled"))
                else:
                    ticket._put(Started(ticket.id))
                    self._serve(ticket)
            except ServerError as exc:
                ticket._put(Failed(str(exc), server=True))
            except UserError as exc:
                ticket._put(Failed(str(exc)))
            except Exception as exc:  # a bug: keep the engine thread alive, tell the user
                log.exception("engine request %d failed", ticket.id)
                ticket._put(Failed(f"internal error: {type(exc).__name__}: {exc}"))
            finally:
                self.running = None
                ticket.state = "finished"
                ticket._put(_END)

    def _serve(self, ticket: Ticket) -> None:
        request = ticket.request
        if isinstance(request, LoadRequest):

            def progress(done: int, total: int) -> None:
                ticket._put(LoadProgress(done, total, "loading weights"))

            t0 = time.perf_counter()
            try:
                info = self.backend.load(request.profile, progress)
            finally:
                self.load_s_total += time.perf_counter() - t0
            self.profile = request.profile
            self.meter = open_meter(info.device, request.profile.cpu_watts_per_core)
            ticket._put(memory_stats())
            ticket._put(ModelReady(request.profile.name, info))
        elif isinstance(request, ClearRequest):
            self.backend.clear(request.messages)
        elif isinstance(request, PinRequest):
            ticket._put(self.backend.pin(request.index, request.pinned))
        elif isinstance(request, TokenizeRequest):
            ticket._put(self.backend.tokenize(request))
        else:
            meter = self.meter
            start = ReplyStart.now(ticket, self.load_s_total, meter)
            last = time.perf_counter()
            for event in self.backend.generate(request, ticket.cancel_event):
                if isinstance(event, Done):
                    event = measured(event, start, meter, self.profile)
                ticket._put(event)
                if isinstance(event, TokenEvent) and time.perf_counter() - last > MEMORY_EVERY_S:
                    ticket._put(memory_stats())
                    last = time.perf_counter()
            ticket._put(memory_stats())
