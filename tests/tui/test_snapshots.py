"""Snapshots of the main screen at 80x24, 100x30 and 160x48 in every theme.

Deterministic: the real app runs over a small real backend that answers with fixed engine
events (fixed text and timings) through the real engine queue and bridge; the prompt is typed
with keys. Only the machine's memory figures are fixed from outside (as TZ is for the list),
the cursor does not blink, and the model path is shown by file name only. The queue's own
figures for a reply (waits, wall time, other processes' load, energy) are fixed too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from textual.pilot import Pilot

from engine.backend import GenerationRequest, ModelInfo, Progress
from engine.chat_format import Message
from engine.config import Profile
from engine.energy import EnergyReading
from engine.events import Done, Event, Pinned, PrefillDone, TokenEvent, TurnStarted
from engine.metrics import GenerationMetrics
from engine.queue import MemoryStats
from engine.store import DB_NAME, ConversationStore
from engine.timings import ReplyTimings
from tui.app.app import LlamaTuiApp, make_app
from tui.app.widgets.prompt import PromptInput

THEMES = ("llama-dark", "llama-light", "llama-high-contrast")
SIZES = ((80, 24), (100, 30), (160, 48))
PROMPT = "How do I reverse a list in Python?"
REPLY = [
    "Use ",
    "slicing",
    ": ",
    "`items[::-1]`",
    " returns a reversed copy.\n\n",
    "```python\n",
    "items = [1, 2, 3]\n",
    "print(items[::-1])  # [3, 2, 1]\n",
    "```\n\n",
    "To reverse **in place**, call `items.reverse()`.",
]
METRICS = GenerationMetrics(
    prompt_tokens=42,
    cached_tokens=30,
    generated_tokens=len(REPLY),
    decode_steps=len(REPLY) - 1,
    ttft_s=0.125,
    prefill_s=0.1,
    decode_s=0.45,
    context_used=52,
    context_limit=512,
)
TIMINGS = ReplyTimings(
    prompt_s=0.002, prefill_s=0.1, decode_forward_s=0.38, sample_s=0.06, detokenize_s=0.004
)
INFO = ModelInfo("tiny-llama.gguf", "tiny-llama.gguf", "cpu", "float32", 512, False, 0.5)
MEMORY = MemoryStats(512 << 20, None, None)


class ReplayBackend:
    """A Backend that loads nothing and answers each chat turn with the same events."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def load(self, profile: Profile, progress: Progress) -> ModelInfo:
        return INFO

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[Event]:
        user = len(self.messages)
        yield TurnStarted(user, user + 1)
        yield PrefillDone(42, 30, 0.1)
        for i, text in enumerate(REPLY):
            yield TokenEvent(i, text, 0.125 + 0.05 * i)
        done = Done("".join(REPLY), [], "stop", METRICS, context_start=0, timings=TIMINGS)
        self.messages += [Message("user", request.text), Message("assistant", done.text)]
        yield done

    def clear(self, messages: Sequence[Message] = ()) -> None:
        self.messages = list(messages)

    def pin(self, index: int, pinned: bool = True) -> Pinned:
        return Pinned(0, (index,) if pinned else ())


def measured(done: Done, *_: object) -> Done:
    """The queue's own figures for a reply, fixed: its waits, wall time, load and energy."""
    timings = replace(done.timings, queue_wait_s=0.003, wall_s=0.56, other_cpu_share=0.4)
    return replace(done, timings=timings, energy=EnergyReading(2.5, "estimate"), cost=0.00042)


def wait_idle(app: LlamaTuiApp) -> Iterator[float]:
    end = time.monotonic() + 30
    while app.chat.profiles.info is None or app.chat.busy:
        assert time.monotonic() < end, "the app did not settle"
        yield 0.05


async def replay(pilot: Pilot[None]) -> None:
    app = pilot.app
    assert isinstance(app, LlamaTuiApp)
    for pause in wait_idle(app):
        await pilot.pause(pause)
    app.chat.query_one(PromptInput).focus()
    await pilot.press(*PROMPT, "enter")
    for pause in wait_idle(app):
        await pilot.pause(pause)
    await pilot.pause(1.2)  # metrics and subtitle timers
    await pilot.wait_for_scheduled_animations()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("theme", THEMES)
def test_main_screen(
    snap_compare: Callable[..., bool],
    tiny_config: Path,
    theme: str,
    size: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("engine.queue.memory_stats", lambda: MEMORY)
    monkeypatch.setattr("engine.queue.measured", measured)
    text = tiny_config.read_text().replace('theme = "llama-dark"', f'theme = "{theme}"')
    tiny_config.write_text(text)
    app = make_app(config_path=tiny_config, cursor_blink=False, backend=ReplayBackend())
    assert snap_compare(app, terminal_size=size, run_before=replay)


@pytest.mark.parametrize("size", ((80, 24), (100, 30)), ids=lambda s: f"{s[0]}x{s[1]}")
def test_metrics_panel_below_the_prompt(
    snap_compare: Callable[..., bool],
    tiny_config: Path,
    size: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A narrow terminal after a reply, F3 pressed: the full Metrics pane under the prompt, the
    conversation keeping the whole width."""
    monkeypatch.setattr("engine.queue.memory_stats", lambda: MEMORY)
    monkeypatch.setattr("engine.queue.measured", measured)
    app = make_app(config_path=tiny_config, cursor_blink=False, backend=ReplayBackend())

    async def open_metrics(pilot: Pilot[None]) -> None:
        await replay(pilot)
        await pilot.press("f3")
        await pilot.pause(0.8)  # the pane's redraw timer
        await pilot.wait_for_scheduled_animations()

    assert snap_compare(app, terminal_size=size, run_before=open_metrics)


def test_conversation_list(snap_compare, tiny_config: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """ctrl+o over three saved conversations, one a fork; fixed times shown in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    data = tmp_path / "data"
    store = ConversationStore(data / DB_NAME)
    first = store.new_conversation("How do I reverse a list in Python?", {})
    for role, text in [("user", "How do I reverse a list?"), ("assistant", "items[::-1]")]:
        store.add_message(first, role, text)
    second = store.new_conversation("Plan a [weekend] trip", {})
    store.add_message(second, "user", "Plan a [weekend] trip")
    fork = store.fork(first, 0)
    store.add_message(fork, "user", "How do I sort a list?")
    for conv, ts in ((first, 1_700_000_000), (second, 1_700_086_400), (fork, 1_700_090_000)):
        store.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (ts, conv))
    store.close()
    app = make_app(config_path=tiny_config, cursor_blink=False, data_dir=data)

    async def open_list(pilot: Pilot[None]) -> None:
        for pause in wait_idle(app):
            await pilot.pause(pause)
        await pilot.press("ctrl+o")
        await pilot.pause(0.3)
        await pilot.wait_for_scheduled_animations()

    try:
        assert snap_compare(app, terminal_size=(100, 20), run_before=open_list)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
