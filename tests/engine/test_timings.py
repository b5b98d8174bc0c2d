"""Where a reply's time went: the phases the engine times, on the tiny model through the real
engine queue, add up to the reply's wall time."""

from __future__ import annotations

from dataclasses import replace

from engine.backend import GenerationRequest
from engine.config import Profile, SamplingSettings
from engine.events import Done
from engine.local import LocalBackend
from engine.queue import EngineQueue, LoadRequest
from engine.saving import reply_record
from engine.timings import PHASES


def reply(queue: EngineQueue, text: str, sampling: SamplingSettings, n: int = 48) -> Done:
    events = list(queue.submit(GenerationRequest("chat", text, sampling, n)))
    dones = [e for e in events if isinstance(e, Done)]
    assert len(dones) == 1
    return dones[0]


def test_phases_sum_to_the_wall_time(tiny_profile: Profile) -> None:
    queue = EngineQueue(LocalBackend(1))
    try:
        list(queue.submit(LoadRequest(replace(tiny_profile, max_new_tokens=48))))
        greedy = SamplingSettings(temperature=0.0, seed=0)
        reply(queue, "warm up", greedy)
        done = reply(queue, "tell me a long story about llamas " * 8, greedy)
        t = done.timings
        assert done.metrics.generated_tokens > 10
        for name in PHASES:
            assert getattr(t, name) >= 0, name
        assert t.prefill_s > 0 and t.decode_forward_s > 0 and t.sample_s > 0
        assert t.prompt_s > 0 and t.detokenize_s > 0
        assert t.load_s == 0  # the model was loaded before this reply was submitted
        assert abs(t.accounted_s - t.wall_s) <= 0.05 * t.wall_s, t
        record = reply_record(done)
        assert set(PHASES) <= set(record["timings"])
        assert record["timings"]["wall_s"] > 0 and 0 <= record["timings"]["other_cpu_share"] <= 1
    finally:
        queue.close()


def test_a_load_queued_before_a_reply_is_its_load_s(tiny_profile: Profile) -> None:
    queue = EngineQueue(LocalBackend(1))
    try:
        queue.submit(LoadRequest(tiny_profile))
        done = reply(queue, "hi", SamplingSettings(temperature=0.0, seed=0), 4)
        t = done.timings
        assert t.load_s > 0 and t.queue_wait_s < t.load_s
        assert abs(t.accounted_s - t.wall_s) <= 0.05 * t.wall_s, t
    finally:
        queue.close()


def test_sample_s_grows_with_an_expensive_sampler(tiny_profile: Profile) -> None:
    """Greedy is an argmax; typical-p over the whole vocabulary with penalties over a long
    window sorts and rescans every step. Same number of tokens for both (no stop ids hit is
    not needed: the per-token figure is compared)."""
    queue = EngineQueue(LocalBackend(1))
    try:
        list(queue.submit(LoadRequest(tiny_profile)))
        greedy = SamplingSettings(temperature=0.0, seed=0)
        costly = SamplingSettings(
            temperature=1.0,
            top_k=0,
            top_p=0.99,
            min_p=0.0,
            typical_p=0.5,
            repeat_penalty=1.3,
            repeat_last_n=4096,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            seed=0,
        )
        reply(queue, "warm up", greedy)
        cheap_done = reply(queue, "count", greedy)
        costly_done = reply(queue, "count", costly)

        def per_token(d: Done) -> float:
            return d.timings.sample_s / max(d.metrics.generated_tokens, 1)

        assert per_token(costly_done) > 1.5 * per_token(cheap_done)
    finally:
        queue.close()
