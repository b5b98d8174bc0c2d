"""Pilot tests of the real app over a tiny random-weight model (and one with the default model)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static

from engine.local import LocalBackend
from engine.routing import ProfileBackend
from tui.app.app import LlamaTuiApp, make_app
from tui.app.messages import SettingEdited
from tui.app.widgets.message import AssistantMessage, LoadBar, Notice, UserMessage
from tui.app.widgets.metrics_pane import metric_lines
from tui.app.widgets.prompt import PromptInput


async def wait_for(pilot: Pilot[None], cond: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {cond.__doc__ or cond}")
        await pilot.pause(0.05)


def idle(app: LlamaTuiApp) -> Callable[[], bool]:
    return lambda: app.chat.profiles.info is not None and not app.chat.busy


def backend(app: LlamaTuiApp) -> LocalBackend:
    """The app's local engine (its ProfileBackend hands local profiles to it)."""
    routed = app.backend
    assert isinstance(routed, ProfileBackend)
    return routed.local


async def say(pilot: Pilot[None], text: str) -> AssistantMessage:
    app = pilot.app
    assert isinstance(app, LlamaTuiApp)
    app.chat.query_one(PromptInput).focus()
    await pilot.press(*text, "enter")
    await wait_for(pilot, idle(app))
    await pilot.pause(0.1)
    reply = app.chat.conversation.last_reply()
    assert reply is not None
    return reply


@pytest.fixture
def app(tiny_config: Path) -> LlamaTuiApp:
    return make_app(config_path=tiny_config, cursor_blink=False)


async def test_prompt_streams_a_reply(app: LlamaTuiApp) -> None:
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        updates: list[int] = []
        original = app.chat.view.on_reply_events

        async def spy(update):  # type: ignore[no-untyped-def]
            updates.append(len(update.events))
            await original(update)

        app.chat.view.on_reply_events = spy  # type: ignore[method-assign]
        reply = await say(pilot, "hello there")
        assert [u.text for u in app.chat.query(UserMessage)] == ["hello there"]
        session = backend(app).session
        assert session is not None and session.messages[-1].content == reply.text
        assert reply.text and reply.status == "reached max_new_tokens"
        assert sum(updates) > 24  # Started, PrefillDone, 24 TokenEvents, Done, memory
        assert app.chat.query_one(PromptInput).text == ""


async def test_metrics_show_throughput_after_a_reply(app: LlamaTuiApp) -> None:
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        await say(pilot, "count to ten")
        rows = dict(metric_lines(app.chat.stats))
        assert rows["decode"].endswith("tok/s") and float(rows["decode"].split()[0]) > 0
        assert rows["RSS"].endswith("MiB")
        assert "new" in rows["prompt"] and rows["TTFT"].endswith("ms")
        assert rows["time"].endswith("submit to end") and " forward" in rows  # where it went
        assert rows["energy"].split(" J ")[1].startswith(("estimate", "rapl"))
        assert app.chat.stats.render_lag_s > 0 and " render" in rows
        await pilot.pause(0.3)  # the pane redraws on its timer
        shown = str(app.chat.query_one("#figures").render())
        assert "tok/s" in shown and "—" not in shown.splitlines()[0]
        pane = app.chat.conversation
        await wait_for(pilot, lambda: "tok/s" in str(pane.border_subtitle), timeout=3)


async def test_escape_cancels_mid_stream_and_the_next_prompt_works(tiny_config: Path) -> None:
    app = make_app("long", tiny_config, cursor_blink=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        await pilot.press(*"go on forever", "enter")
        await wait_for(pilot, lambda: app.chat.stats.tokens >= 3)
        await pilot.press("escape")
        await wait_for(pilot, idle(app))
        await pilot.pause(0.1)
        stopped = app.chat.conversation.last_reply()
        assert stopped is not None and stopped.status == "stopped"
        assert stopped.has_class("-stopped") and stopped.text
        assert 3 <= app.chat.stats.last.generated_tokens < 4000  # type: ignore[union-attr]
        app.chat.profiles.switch("tiny")  # short replies again (sampling-only switch)
        reply = await say(pilot, "next question")
        assert reply is not stopped and reply.status == "reached max_new_tokens"
        session = backend(app).session
        assert session is not None and session.messages[1].content == stopped.text


async def test_sampling_only_switch_does_not_reload(app: LlamaTuiApp) -> None:
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        await say(pilot, "first")
        loads = backend(app).loads
        app.chat.query_one("#profile-picker", Select).value = "tiny-hot"  # as the picker does
        await pilot.pause(0.2)
        assert not app.chat.profiles.loads and backend(app).loads == loads
        profile = app.chat.controller.profile
        assert profile is not None and profile.sampling.temperature == 1.3
        assert app.chat.state.name == "tiny-hot"
        await say(pilot, "second")
        assert backend(app).loads == loads
        assert len(app.chat.query(AssistantMessage)) == 2


async def test_weight_change_reloads_in_background_and_keeps_the_conversation(
    app: LlamaTuiApp,
) -> None:
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        first = await say(pilot, "remember this")
        bars: list[LoadBar] = []
        show_load = app.chat.conversation.show_load

        def spy(label: str) -> LoadBar:
            bars.append(show_load(label))
            return bars[-1]

        app.chat.conversation.show_load = spy  # type: ignore[method-assign]
        app.chat.profiles.switch("tiny-bf16")
        await wait_for(pilot, idle(app))
        assert bars and bars[-1].bar.progress == bars[-1].bar.total  # progress reached the end
        await pilot.pause(0.2)
        assert not app.chat.query(LoadBar)  # and the bar is gone once the model is ready
        assert backend(app).loads == 2 and app.chat.profiles.info is not None
        assert app.chat.profiles.info.dtype == "bfloat16" and not app.chat.profiles.info.reused
        assert first in app.chat.query(AssistantMessage)  # still on screen
        await say(pilot, "and now?")
        session = backend(app).session
        assert session is not None and session.messages[0].content == "remember this"
        # back to float32: the model cache still holds it
        app.chat.profiles.switch("tiny")
        await wait_for(pilot, idle(app))
        assert backend(app).loads == 2 and app.chat.profiles.info.reused


async def test_bad_value_in_the_config_pane_is_refused_in_place(app: LlamaTuiApp) -> None:
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        field = app.chat.query_one("#set-temperature", Input)
        field.focus()
        field.value = ""
        await pilot.press(*"-1", "enter")
        await pilot.pause(0.1)
        error = str(app.chat.query_one("#config-error", Static).render())
        assert "temperature = -1: must be >= 0" in error
        assert field.has_class("-invalid") and field.value == "-1"
        profile = app.chat.controller.profile
        assert profile is not None and profile.sampling.temperature == 1.0
        field.value = "abc"
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert "must be a number" in str(app.chat.query_one("#config-error", Static).render())
        field.value = "0.25"  # a good value applies at once, without a reload
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.chat.controller.profile.sampling.temperature == 0.25
        assert not field.has_class("-invalid") and backend(app).loads == 1
        await say(pilot, "still alive")


async def test_config_file_edits_show_up_live(app: LlamaTuiApp, tiny_config: Path) -> None:
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        text = tiny_config.read_text().replace("[profiles.tiny]\n", "[profiles.tiny]\ntop_k = 7\n")
        tiny_config.write_text(text + "\n[profiles.added]\ntemperature = 0.5\n")
        await wait_for(pilot, lambda: "added" in app.chat.state.names, timeout=5)
        picker = app.chat.query_one("#profile-picker", Select)
        assert ("added", "added") in [(str(o[0]), o[1]) for o in picker._options]
        profile = lambda: app.chat.controller.profile  # noqa: E731
        await wait_for(pilot, lambda: profile().sampling.top_k == 7, timeout=5)  # type: ignore
        tiny_config.write_text(text + "\n[profiles.broken]\ntemperature = -3\n")
        error = app.chat.query_one("#config-error", Static)
        await wait_for(pilot, lambda: "not reloaded" in str(error.render()), timeout=5)
        assert app.chat.controller.profile.sampling.top_k == 7  # type: ignore[union-attr]


async def test_prompt_history_newline_regenerate_and_clear(app: LlamaTuiApp) -> None:
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        await say(pilot, "one")
        await say(pilot, "two")
        prompt = app.chat.query_one(PromptInput)
        await pilot.press("up")
        assert prompt.text == "two"
        await pilot.press("up")
        assert prompt.text == "one"
        await pilot.press("down", "down")
        assert prompt.text == ""
        await pilot.press("a", "ctrl+j", "b")
        assert prompt.text == "a\nb"
        prompt.clear()
        await pilot.press("ctrl+r")
        await wait_for(pilot, idle(app))
        assert len(app.chat.query(AssistantMessage)) == 2
        session = backend(app).session
        assert session is not None and len(session.messages) == 4
        await pilot.press("ctrl+n")
        await wait_for(pilot, idle(app))
        await pilot.pause(0.1)
        assert not app.chat.query(AssistantMessage) and session.messages == []


async def test_palette_commands_and_themes(app: LlamaTuiApp) -> None:
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for wanted in (
            "Switch profile: tiny-hot",
            "Switch theme: llama-light",
            "New conversation",
            "Copy last reply",
            "Show keys",
        ):
            assert wanted in titles
        assert app.theme == "llama-dark"
        command = next(
            c
            for c in app.get_system_commands(app.screen)
            if c.title == "Switch theme: llama-high-contrast"
        )
        command.callback()
        assert app.theme == "llama-high-contrast"
        await pilot.press("f1")
        await pilot.pause(0.1)
        assert app.screen.query("HelpPanel")


async def test_narrow_terminal_hides_side_panes_until_toggled(app: LlamaTuiApp) -> None:
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, idle(app))
        assert not app.chat.query_one("#sidebar").display
        await pilot.press("f3")
        assert app.chat.query_one("#metrics").display and app.chat.query_one("#sidebar").display
        await pilot.press("f2")  # one bottom panel at a time
        assert app.chat.query_one("#config").display and not app.chat.query_one("#metrics").display
        await pilot.press("f2")
        assert not app.chat.query_one("#sidebar").display


async def test_80x24_strip_shows_the_figures_and_f3_keeps_the_conversation_wide(
    app: LlamaTuiApp,
) -> None:
    """Over SSH at 80x24: the strip above the prompt shows tok/s, TTFT and the context after a
    reply; F3 opens the metrics below, the conversation keeping >= 60 columns."""
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, idle(app))
        await say(pilot, "count to ten")
        await pilot.pause(0.6)  # the strip redraws on its timer
        strip = str(app.chat.query_one("#strip").render())
        m = app.chat.stats.last
        assert m is not None
        assert f"{m.decode_tok_s:,.1f} tok/s" in strip
        assert f"TTFT {m.ttft_s * 1000:,.0f} ms" in strip
        assert f"ctx {m.context_used:,} / 512" in strip and "RSS" in strip
        await pilot.press("f3")
        await pilot.pause(0.1)
        assert app.chat.query_one("#metrics").region.height > 0
        assert app.chat.conversation.region.width >= 60
        footer = [st.text for st in app.screen._compositor.render_strips()][-1]
        assert "f1 Keys" in footer and "f3 Metrics" in footer  # no key clipped mid-word


async def test_figures_update_while_the_reply_streams() -> None:
    """TTFT as soon as the first token lands, the context growing token by token."""
    from engine import PrefillDone, Started, TokenEvent
    from tui.app.stats import LiveStats
    from tui.app.widgets.metrics_pane import strip_text

    stats = LiveStats()
    stats.take(Started(1))
    assert "TTFT —" in strip_text(stats)
    stats.take(PrefillDone(40, 30, 0.1))
    stats.take(TokenEvent(5, "a", 0.125))
    assert "TTFT 125 ms" in strip_text(stats) and "ctx" in strip_text(stats)
    stats.take(TokenEvent(6, "b", 0.175))
    assert stats.context_used == 42 and stats.cached_tokens == 30
    assert "42 cached" not in strip_text(stats)


@pytest.mark.slow
async def test_default_model_chats(tmp_path: Path) -> None:
    config = tmp_path / "llama-tui.toml"
    config.write_text('[defaults]\nmax_new_tokens = 12\ntemperature = 0.0\ndtype = "float32"\n')
    app = make_app(config_path=config, cursor_blink=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, idle(app), timeout=60)
        assert app.chat.profiles.info is not None and "SmolLM2" in app.chat.profiles.info.name
        reply = await say(pilot, "What is the capital of France?")
        assert "Paris" in reply.text


def test_metrics_pane_shows_offload_only_when_weights_are_streamed() -> None:
    from engine.metrics import GenerationMetrics
    from tui.app.stats import LiveStats

    stats = LiveStats()
    stats.on_done(GenerationMetrics(generated_tokens=9, decode_steps=8, decode_s=2.0))
    assert "offload" not in dict(metric_lines(stats))
    streamed = GenerationMetrics(
        generated_tokens=9,
        decode_steps=8,
        decode_s=2.0,
        offload_bytes_per_token=3 * 2**30,
        offload_wait_s=1.5,
    )
    stats.on_done(streamed)
    assert dict(metric_lines(stats))["offload"] == "3.00 GiB/token at 12.9 GB/s, 75% waiting"


async def test_reply_details_show_every_phase_and_the_plots(app: LlamaTuiApp) -> None:
    from tui.app.screens.reply_details import ReplyDetailsScreen, detail_lines
    from tui.app.widgets.throughput_plots import RepliesBars, ReplyCurve

    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, idle(app))
        await say(pilot, "count to ten")
        await pilot.press("f9")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ReplyDetailsScreen)
        lines = detail_lines(app.chat.stats)
        phases = {line.split()[0] for line in lines if line}
        assert {"queue", "prefill", "forward", "sample", "detok", "wall"} <= phases
        assert any(line.startswith("energy") for line in lines)
        assert app.screen.query_one(ReplyCurve).stats.curve  # tok/s over the reply, drawn
        assert list(app.screen.query_one(RepliesBars).stats.turns)
        await pilot.press("escape")
        assert not isinstance(app.screen, ReplyDetailsScreen)


async def test_reply_details_step_to_an_earlier_reply_also_after_resuming(
    tiny_config: Path, tmp_path: Path
) -> None:
    from tui.app.screens.reply_details import ReplyDetailsScreen, record_lines

    overrides: dict[str, object] = {"max_new_tokens": 5}
    app = make_app(
        config_path=tiny_config, overrides=overrides, cursor_blink=False, data_dir=tmp_path
    )
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, idle(app))
        first = await say(pilot, "one")
        app.chat.profiles.edit(SettingEdited("max_new_tokens", "9"))
        await pilot.pause(0.1)
        await say(pilot, "two")

        def figures() -> str:
            return str(app.screen.query_one("#detail-figures", Static).render())

        def title() -> str:
            return str(app.screen.query_one("#question").render())

        await pilot.press("f9")
        await pilot.pause(0.2)
        assert isinstance(app.screen, ReplyDetailsScreen)
        assert title().startswith("Last reply") and figures().startswith("9 tokens")
        await pilot.press("left")
        await pilot.pause(0.1)
        assert title().startswith("Reply 1 of 2") and figures().startswith("5 tokens")
        assert first.record is not None and figures() == "\n".join(record_lines(first.record))
        assert "forward" in figures() and "wall" in figures()
        await pilot.press("left")  # the first: stays
        await pilot.pause(0.05)
        assert title().startswith("Reply 1 of 2")
        await pilot.press("right")
        await pilot.pause(0.1)
        assert title().startswith("Last reply") and figures().startswith("9 tokens")
        await pilot.press("escape")
        conv = app.chat.controller.conv
        assert conv is not None

        await app.chat.saved.start_new()
        await app.chat.saved.resume(conv)  # the figures come back from the store
        await pilot.pause(0.2)
        await wait_for(pilot, idle(app))
        await say(pilot, "three")
        await pilot.press("f9")
        await pilot.pause(0.2)
        await pilot.press("left", "left")
        await pilot.pause(0.1)
        assert title().startswith("Reply 1 of 3") and figures().startswith("5 tokens")
        assert "forward" in figures()


async def test_ctrl_g_continues_the_last_reply_from_the_cache(tiny_config: Path) -> None:
    """A reply cut by max_new_tokens, then Ctrl+G: the same block goes on, nothing is prefilled
    again, and the store keeps one reply holding both parts."""
    overrides = {"max_new_tokens": 6, "temperature": 0.0, "repeat_penalty": 1.0}
    app = make_app(config_path=tiny_config, overrides=overrides, cursor_blink=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        first = await say(pilot, "Tell me a story.")
        cut = first.text
        assert app.chat.stats.last is not None and app.chat.stats.last.generated_tokens == 6
        await pilot.press("ctrl+g")  # from the prompt, where F5-F7 select text
        await pilot.pause(0.2)
        await wait_for(pilot, idle(app))
        await pilot.pause(0.1)
        assert app.chat.conversation.last_reply() is first  # the same block, extended
        assert first.text.startswith(cut) and len(first.text) > len(cut)
        m = app.chat.stats.last
        assert m is not None and m.computed_tokens <= 1 and m.generated_tokens == 6
        assert len(list(app.chat.query(AssistantMessage))) == 1
        store, conv = app.chat.controller.store, app.chat.controller.conv
        assert store is not None and conv is not None
        rows = store.messages(conv)
        assert [r["role"] for r in rows] == ["user", "assistant"]
        assert rows[1]["content"] == first.text


async def test_a_persona_from_the_palette_sets_the_system_prompt_and_is_saved(
    tiny_config: Path,
) -> None:
    with tiny_config.open("a") as f:
        f.write('\n[prompts.pirate]\nsystem = "You are a pirate."\ntemperature = 0.0\n')
    app = make_app(config_path=tiny_config, cursor_blink=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        titles = [c.title for c in app.get_system_commands(app.chat)]
        assert "Persona: pirate" in titles and "Persona: none" not in titles
        next(
            c for c in app.get_system_commands(app.chat) if c.title == "Persona: pirate"
        ).callback()
        await pilot.pause(0.2)
        await wait_for(pilot, idle(app))
        profile = app.chat.controller.profile
        assert profile is not None and profile.system_prompt == "You are a pirate."
        assert profile.sampling.temperature == 0.0  # the persona's sampling too
        session = backend(app).session
        assert session is not None and session.system_prompt == "You are a pirate."
        pane = app.chat.query_one("#config")
        assert pane.border_subtitle == "llama-tui.toml · persona pirate"
        await say(pilot, "Ahoy?")
        store, conv = app.chat.controller.store, app.chat.controller.conv
        assert store is not None and conv is not None
        assert store.get(conv)["persona"] == "pirate"

        app.chat.use_persona(None)  # "Persona: none"
        await pilot.pause(0.2)
        await wait_for(pilot, idle(app))
        profile = app.chat.controller.profile
        assert profile is not None and profile.system_prompt != "You are a pirate."
        assert pane.border_subtitle == "llama-tui.toml"
        app.chat.use_persona("parrot")  # not in the file: one line, nothing changes
        await pilot.pause(0.1)
        assert any("no persona 'parrot'" in n.message for n in app._notifications)


async def test_slash_file_in_the_prompt_attaches_a_file_to_the_next_message(
    tiny_config: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("line one\nthe secret word is pineapple\nline three\n")
    app = make_app(config_path=tiny_config, cursor_blink=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))

        def notices() -> list[str]:
            return [str(n.render()) for n in app.chat.query(Notice)]

        await say_raw(pilot, f"/file {tmp_path / 'missing.txt'}")
        await wait_for(pilot, lambda: any("/file:" in n for n in notices()))
        assert any("missing.txt" in n for n in notices())
        await say_raw(pilot, f"/file {notes}")
        await wait_for(pilot, lambda: any("attached notes.txt" in n for n in notices()))
        shown = next(n for n in notices() if "attached notes.txt" in n)
        assert "notes.txt · 49 B · " in shown and "tokens" in shown
        assert not app.chat.query(UserMessage)  # nothing was sent yet
        await say(pilot, "what is the secret word?")
        users = list(app.chat.query(UserMessage))
        assert [u.text for u in users] == ["what is the secret word?"]  # as typed
        session = backend(app).session
        assert session is not None
        sent = session.messages[0].content
        assert "the secret word is pineapple" in sent and sent.endswith("what is the secret word?")
        store, conv = app.chat.controller.store, app.chat.controller.conv
        assert store is not None and conv is not None
        [row] = store.attachments(store.messages(conv)[0]["id"])
        assert row["path"] == str(notes) and row["size"] == 49 and row["tokens"] > 0


async def say_raw(pilot: Pilot[None], text: str) -> None:
    """Type `text` into the prompt and press Enter (a command: no reply to wait for)."""
    app = pilot.app
    assert isinstance(app, LlamaTuiApp)
    app.chat.query_one(PromptInput).focus()
    await pilot.press(*text, "enter")
    await pilot.pause(0.1)


def test_metrics_pane_names_the_decode_step_only_when_a_compiled_one_is_in_play() -> None:
    from engine.metrics import GenerationMetrics
    from tui.app.stats import LiveStats

    stats = LiveStats()
    stats.on_done(GenerationMetrics(generated_tokens=9, decode_steps=8, decode_s=2.0))
    assert "step" not in dict(metric_lines(stats))  # eager, nothing building (compile off)
    building, failed = "eager (compiled step building)", "eager (compiled step failed: why)"
    for label in (building, failed, "eager, then compiled", "compiled"):
        done = GenerationMetrics(
            generated_tokens=9, decode_steps=8, decode_s=2.0, decode_step=label
        )
        stats.on_done(done)
        assert dict(metric_lines(stats))["step"] == label


def test_metrics_pane_says_how_drafts_went_or_that_they_wait_for_the_verify_step() -> None:
    from engine.metrics import GenerationMetrics
    from tui.app.stats import LiveStats

    stats = LiveStats()
    base = GenerationMetrics(generated_tokens=9, decode_steps=8, decode_s=2.0)
    stats.on_done(base)
    assert "drafts" not in dict(metric_lines(stats))  # speculative off
    stats.on_done(replace(base, draft_tokens=12, accepted_tokens=7))
    assert dict(metric_lines(stats))["drafts"] == "7 of 12 tokens accepted"
    stats.on_done(replace(base, drafts_waited=8))
    assert dict(metric_lines(stats))["drafts"] == "none yet: verify step not built"
