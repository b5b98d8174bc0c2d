"""EngineQueue without Textual: ordering, cancel, concurrent submits, the model cache."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from engine import Pinned, PinRequest, TurnStarted
from engine.backend import GenerationRequest
from engine.config import Profile, SamplingSettings
from engine.events import Done, Failed, LoadProgress, PrefillDone, TokenEvent
from engine.local import LocalBackend
from engine.queue import ClearRequest, EngineQueue, LoadRequest, MemoryStats, ModelReady, Started
from tests.gguf_writer import write_tiny_gguf

GREEDY = SamplingSettings(temperature=0.0, seed=0)
SAMPLED = SamplingSettings(temperature=1.0, top_k=50, seed=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")


@pytest.fixture
def profile(tiny: Path) -> Profile:
    return Profile(name="tiny", model=str(tiny), dtype="float32", context_length=1024)


@pytest.fixture
def engine(profile: Profile) -> Iterator[EngineQueue]:
    queue = EngineQueue(LocalBackend(max_loaded_models=2))
    events = list(queue.submit(LoadRequest(profile)))
    assert isinstance(events[-1], ModelReady), events[-1]
    yield queue
    queue.close()


def chat(text: str, n: int = 8, sampling: SamplingSettings = SAMPLED) -> GenerationRequest:
    return GenerationRequest("chat", text, sampling, n)


def done_of(events: list[object]) -> Done:
    assert isinstance(events[-1], Done) or isinstance(events[-2], Done), events[-3:]
    return next(e for e in reversed(events) if isinstance(e, Done))


def test_load_reports_progress_memory_and_ready(profile: Profile) -> None:
    queue = EngineQueue(LocalBackend())
    try:
        events = list(queue.submit(LoadRequest(profile)))
    finally:
        queue.close()
    assert isinstance(events[0], Started)
    progress = [e for e in events if isinstance(e, LoadProgress)]
    assert progress and progress[-1].done == progress[-1].total
    assert any(isinstance(e, MemoryStats) and e.rss_bytes > 0 for e in events)
    ready = events[-1]
    assert isinstance(ready, ModelReady) and not ready.info.reused and ready.info.load_s > 0


def test_requests_run_in_submission_order(engine: EngineQueue) -> None:
    tickets = [engine.submit(chat(f"question {i}")) for i in range(3)]
    assert [t.id for t in tickets] == sorted(t.id for t in tickets)
    for ticket in tickets:
        events = list(ticket)
        assert isinstance(events[0], Started) and events[0].request_id == ticket.id
        done_of(events)
    session = engine.backend.session  # type: ignore[attr-defined]
    users = [m.content for m in session.messages if m.role == "user"]
    assert users == ["question 0", "question 1", "question 2"]


def test_waiting_requests_are_pending_until_their_turn(engine: EngineQueue) -> None:
    first = engine.submit(chat("long one", n=300))
    second = engine.submit(chat("next"))
    it = iter(first)
    next(e for e in it if isinstance(e, TokenEvent))  # the first is running now
    assert first.state == "running" and second.state == "pending"
    assert engine.pending == [second]
    first.cancel()
    list(it)
    assert isinstance(list(second)[0], Started)


def test_cancel_stops_within_a_step_and_keeps_the_partial_reply(engine: EngineQueue) -> None:
    ticket = engine.submit(chat("tell me everything", n=500, sampling=GREEDY))
    seen = 0
    events = []
    for event in ticket:
        events.append(event)
        if isinstance(event, TokenEvent):
            seen += 1
            if seen == 3:
                ticket.cancel()
    done = done_of(events)
    assert done.stop_reason == "cancelled"
    assert 3 <= len(done.token_ids) < 500  # the consumer may lag the engine by a few tokens
    session = engine.backend.session  # type: ignore[attr-defined]
    assert session.messages[-1].role == "assistant" and session.messages[-1].content == done.text
    # the next turn reuses the cache for everything kept and answers normally
    events = list(engine.submit(chat("and then?")))
    prefill = next(e for e in events if isinstance(e, PrefillDone))
    assert prefill.cached_tokens >= done.metrics.prompt_tokens - 1  # all but the last token
    assert done_of(events).stop_reason in ("stop", "length")


def test_cancelled_before_it_starts_never_runs(engine: EngineQueue) -> None:
    first = engine.submit(chat("first", n=200))
    second = engine.submit(chat("never asked"))
    third = engine.submit(chat("third"))
    second.cancel()
    first.cancel()
    list(first)
    events = list(second)
    assert events == [Done("", [], "cancelled")]
    done_of(list(third))
    session = engine.backend.session  # type: ignore[attr-defined]
    assert "never asked" not in [m.content for m in session.messages]


def test_concurrent_submissions_all_complete(engine: EngineQueue) -> None:
    results: dict[int, Done] = {}
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(3):
            ticket = engine.submit(chat(f"client {k} message {i}", n=4))
            done = done_of(list(ticket))
            with lock:
                results[ticket.id] = done

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 12
    session = engine.backend.session  # type: ignore[attr-defined]
    assert len(session.messages) == 24


def test_async_iteration_from_an_event_loop(engine: EngineQueue) -> None:
    async def run() -> list[object]:
        return [event async for event in engine.submit(chat("async hello"))]

    events = asyncio.run(run())
    assert isinstance(events[0], Started)
    assert any(isinstance(e, TokenEvent) for e in events)
    done_of(events)


def test_a_batching_consumer_wakes_when_the_stream_ends(engine: EngineQueue) -> None:
    # the app's bridge sleeps between batches; the end must not wait out the sleep
    async def run() -> float:
        ticket = engine.submit(chat("short", n=2))
        t0 = time.perf_counter()
        await ticket.wait_unless_ended(30.0)
        waited = time.perf_counter() - t0
        events, ended = await ticket.drain()
        assert ended and any(isinstance(e, Done) for e in events)
        return waited

    assert asyncio.run(run()) < 25.0  # woke at the end, well before the 30 s


def test_model_cache_hit_and_miss(engine: EngineQueue, profile: Profile) -> None:
    backend: LocalBackend = engine.backend  # type: ignore[assignment]
    done_of(list(engine.submit(chat("remember me"))))

    def load(p: Profile) -> ModelReady:
        events = list(engine.submit(LoadRequest(p)))
        assert isinstance(events[-1], ModelReady), events[-1]
        return events[-1]

    hot = replace(profile, name="hot", sampling=SamplingSettings(temperature=1.5))
    assert load(hot).info.reused and backend.loads == 1
    bf16 = replace(profile, name="bf16", dtype="bfloat16")
    ready = load(bf16)
    assert not ready.info.reused and ready.info.dtype == "bfloat16" and backend.loads == 2
    assert backend.session is not None and backend.session.messages[0].content == "remember me"
    assert load(profile).info.reused and backend.loads == 2  # both fit (max_loaded_models=2)
    backend.max_loaded_models = 1
    f16 = replace(profile, name="f16", dtype="float16")
    assert not load(f16).info.reused and len(backend.models) == 1  # evicted both others
    assert not load(profile).info.reused and backend.loads == 4  # so this reloads


def test_failures_are_one_line_and_the_engine_survives(
    engine: EngineQueue, profile: Profile
) -> None:
    events = list(engine.submit(LoadRequest(replace(profile, model="/nonexistent/x.gguf"))))
    assert isinstance(events[-1], Failed) and "not found" in events[-1].message
    done_of(list(engine.submit(chat("still here?"))))
    list(engine.submit(ClearRequest()))
    assert engine.backend.session.messages == []  # type: ignore[attr-defined]


class CancelAfter(LocalBackend):
    """The real backend, with cancel set from the engine thread right after token `n`."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def generate(self, request: GenerationRequest, cancel: threading.Event):  # type: ignore[no-untyped-def]
        seen = 0
        for event in super().generate(request, cancel):
            yield event
            if isinstance(event, TokenEvent):
                seen += 1
                if seen == self.n:
                    cancel.set()


def test_cancel_takes_effect_within_one_decode_step(profile: Profile) -> None:
    queue = EngineQueue(CancelAfter(3))
    try:
        list(queue.submit(LoadRequest(profile)))
        done = done_of(list(queue.submit(chat("go", n=500, sampling=GREEDY))))
    finally:
        queue.close()
    assert done.stop_reason == "cancelled" and len(done.token_ids) == 3


def test_resume_and_edit_through_the_queue(engine: EngineQueue) -> None:
    from engine.chat_format import Message

    saved = (Message("user", "hi"), Message("assistant", "hello"))
    assert isinstance(list(engine.submit(ClearRequest(saved)))[-1], Started)
    first = done_of(list(engine.submit(chat("and then?", 4, GREEDY))))
    assert first.context_start == 0 and first.pinned == ()
    session = engine.backend.session  # type: ignore[attr-defined]
    assert [m.content for m in session.messages[:3]] == ["hi", "hello", "and then?"]
    edit = GenerationRequest("edit", "hi, edited", GREEDY, 4, index=0)
    edited = done_of(list(engine.submit(edit)))
    assert edited.context_start == 0 and len(session.messages) == 2
    assert session.messages[0].content == "hi, edited"
    bad = list(engine.submit(GenerationRequest("edit", "x", GREEDY, 4, index=1)))
    assert any(isinstance(e, Failed) and "not a user message" in e.message for e in bad)
    raw = done_of(list(engine.submit(GenerationRequest("complete", "once upon", GREEDY, 4))))
    assert raw.context_start is None  # not a chat turn


def test_turns_say_where_their_messages_go_and_pins_run_in_order(engine: EngineQueue) -> None:
    [started] = [e for e in engine.submit(chat("remember this")) if isinstance(e, TurnStarted)]
    assert (started.user, started.reply, started.notice) == (0, 1, None)
    pin, second = engine.submit(PinRequest(0)), engine.submit(chat("next"))  # in order
    assert [e for e in pin if isinstance(e, Pinned)] == [Pinned(0, (0,))]
    events = list(second)
    assert [(e.user, e.reply) for e in events if isinstance(e, TurnStarted)] == [(2, 3)]
    assert done_of(events).pinned == (0,)
    bad = [e for e in engine.submit(PinRequest(7)) if isinstance(e, Failed)]
    assert [e.message for e in bad] == [
        "there is no message 8: this conversation has 4 messages, numbered from 1"
    ]
    unpinned = [e for e in engine.submit(PinRequest(0, pinned=False)) if isinstance(e, Pinned)]
    assert unpinned == [Pinned(0, ())]
