"""A cancel storm: 100 submit/cancel cycles through the engine queue (pending ones cancelled
before they run, running ones mid-reply), then one greedy reply identical to a clean engine's;
the queue ends idle and no thread is left behind."""

from __future__ import annotations

import random
import threading
from dataclasses import replace

from engine.backend import GenerationRequest
from engine.config import Profile
from engine.events import Done, TokenEvent
from engine.local import LocalBackend
from engine.queue import ClearRequest, EngineQueue, LoadRequest, ModelReady

CYCLES = 100


def greedy_reply(queue: EngineQueue, profile: Profile) -> list[int]:
    list(queue.submit(ClearRequest()))
    ask = GenerationRequest("chat", "the same question", profile.sampling, 12)
    [done] = [e for e in queue.submit(ask) if isinstance(e, Done)]
    assert done.stop_reason in ("length", "stop")
    return done.token_ids


def started(profile: Profile) -> EngineQueue:
    queue = EngineQueue(LocalBackend())
    assert isinstance(list(queue.submit(LoadRequest(profile)))[-1], ModelReady)
    return queue


def test_a_cancel_storm_leaves_the_engine_as_a_clean_one(tiny_profile: Profile) -> None:
    profile = replace(tiny_profile, context_length=512)
    before = set(threading.enumerate())
    clean = started(profile)
    expected = greedy_reply(clean, profile)
    clean.close()

    queue = started(profile)
    rng = random.Random(14)
    long = GenerationRequest("chat", "go on and on", profile.sampling, 400)
    outcomes = {"cancelled": 0, "tokens": 0}
    for i in range(CYCLES):
        tickets = [queue.submit(long) for _ in range(rng.randint(1, 3))]
        if i % 3 == 0:  # let the first one stream a token or two
            for event in tickets[0]:
                if isinstance(event, TokenEvent):
                    outcomes["tokens"] += 1
                    break
        for ticket in reversed(tickets) if i % 2 else tickets:
            ticket.cancel()
        for ticket in tickets:
            [done] = [e for e in ticket if isinstance(e, Done)]
            outcomes["cancelled"] += done.stop_reason == "cancelled"
        if i % 10 == 9:
            list(queue.submit(ClearRequest()))  # the conversation does not grow without bound
    assert outcomes["tokens"] >= CYCLES // 3 and outcomes["cancelled"] >= CYCLES
    assert queue.running is None and queue.pending == []

    assert greedy_reply(queue, profile) == expected  # the same token ids, exactly
    assert queue.running is None and queue.pending == []
    queue.close()
    leaked = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leaked == [], leaked
