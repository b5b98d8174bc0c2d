"""Saved conversations in the app: saving, the list (resume, rename, delete, export), forks by
editing an earlier message, and messages dimmed once trimming drops them. Real app, tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Label, OptionList

from engine.store import DB_NAME, ConversationStore
from tests.tui.conftest import ENDLESS
from tests.tui.test_app import backend, idle, say, wait_for
from tui.app.app import LlamaTuiApp, make_app
from tui.app.screens.confirm import ConfirmScreen
from tui.app.screens.conversations import ConversationsScreen
from tui.app.screens.edit_message import EditMessageScreen
from tui.app.screens.pin_message import PinMessageScreen
from tui.app.screens.text_prompt import TextPromptScreen
from tui.app.widgets.message import AssistantMessage, UserMessage
from tui.app.widgets.metrics_pane import context_text, metric_lines
from tui.app.widgets.prompt import PromptInput


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def app(tiny_config: Path, data: Path) -> LlamaTuiApp:
    return make_app(config_path=tiny_config, cursor_blink=False, data_dir=data)


def saved(data: Path) -> ConversationStore:
    return ConversationStore(data / DB_NAME)


def contents(store: ConversationStore, conv: int) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in store.messages(conv)]


async def open_list(pilot, app: LlamaTuiApp) -> ConversationsScreen:  # type: ignore[no-untyped-def]
    await pilot.press("ctrl+o")
    await wait_for(pilot, lambda: isinstance(app.screen, ConversationsScreen))
    await pilot.pause(0.05)
    assert isinstance(app.screen, ConversationsScreen)
    return app.screen


def status(screen: ConversationsScreen) -> str:
    return str(screen.query_one("#list-status", Label).render())


async def test_a_chat_is_saved_every_turn_and_listed(app: LlamaTuiApp, data: Path) -> None:
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        await say(pilot, "hello there")
        await say(pilot, "and again")
        session = backend(app).session
        assert session is not None
        store = saved(data)
        [row] = store.list_conversations()
        assert row["title"] == "hello there" and row["message_count"] == 4
        expected = [(m.role, m.content) for m in session.messages]
        assert contents(store, row["id"]) == expected
        metrics = json.loads(store.messages(row["id"])[1]["metrics_json"])
        assert metrics["generated_tokens"] > 0 and metrics["stop_reason"] == "length"
        screen = await open_list(pilot, app)
        table = screen.query_one(DataTable)
        assert table.row_count == 1
        cells = [str(c) for c in table.get_row_at(0)]
        assert cells[0] == f"●{row['id']}" and cells[1] == "hello there" and cells[3] == "4"
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat)
        # regenerate replaces the saved reply, as it does in the session
        app.chat.query_one(PromptInput).focus()
        await pilot.press("ctrl+r")
        await wait_for(pilot, idle(app))
        await pilot.pause(0.1)
        assert contents(store, row["id"]) == [(m.role, m.content) for m in session.messages]
        assert len(session.messages) == 4
        # deleting the chat on screen from the list starts a new one; the next turn saves it
        await open_list(pilot, app)
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await pilot.pause(0.1)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat)
        await wait_for(pilot, idle(app))
        assert not app.chat.query(UserMessage)
        await say(pilot, "a fresh start")
        [again] = store.list_conversations()
        assert again["title"] == "a fresh start" and again["message_count"] == 2


async def test_a_streaming_reply_is_on_disk_before_it_ends(tiny_config: Path, data: Path) -> None:
    app = make_app("long", tiny_config, ENDLESS, cursor_blink=False, data_dir=data)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        app.chat.send("go on forever")
        store = saved(data)  # another connection, as after a crash

        def partial_saved() -> bool:
            rows = store.list_conversations()
            if not rows or rows[0]["message_count"] < 2:
                return False
            return len(store.messages(rows[0]["id"])[1]["content"]) > 0

        await wait_for(pilot, partial_saved)
        [row] = store.list_conversations()
        reply = store.messages(row["id"])[1]
        assert app.chat.busy  # read while it still streams (a pause here let a fast CPU finish)
        assert reply["content"] and not reply["stopped"] and reply["metrics_json"] is None
        await pilot.press("escape")
        await wait_for(pilot, idle(app))
        await pilot.pause(0.1)
        reply = store.messages(row["id"])[1]
        shown = app.chat.conversation.last_reply()
        assert shown is not None and reply["content"] == shown.text and reply["stopped"] == 1


async def test_queued_prompts_are_saved_in_order(tiny_config: Path, data: Path) -> None:
    """Replies long enough to span several UI batches: the next turn starts on the engine
    while the screen has not yet seen the end of the one before."""
    overrides = {"max_new_tokens": 64}
    app = make_app(config_path=tiny_config, overrides=overrides, cursor_blink=False, data_dir=data)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        for text in ("one", "two", "three"):  # as fast as Enter could send them
            app.chat.send(text)
        await wait_for(pilot, idle(app), timeout=90)  # a busy machine makes this slow
        await pilot.pause(0.1)
        session = backend(app).session
        assert session is not None and len(session.messages) == 6
        [row] = saved(data).list_conversations()
        assert contents(saved(data), row["id"]) == [(m.role, m.content) for m in session.messages]


async def test_no_save_writes_nothing(tiny_config: Path, data: Path) -> None:
    app = make_app(config_path=tiny_config, cursor_blink=False, data_dir=data, save=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        await say(pilot, "not for the record")
        assert not (data / DB_NAME).exists()


async def test_resume_shows_the_messages_and_the_next_turn_is_saved_there(
    app: LlamaTuiApp, data: Path
) -> None:
    store = saved(data)
    old = store.new_conversation("about the sea", {})
    store.add_message(old, "user", "what colour is the sea?")
    store.add_message(old, "assistant", "Blue, mostly.")
    other = store.new_conversation("something else", {})
    store.add_message(other, "user", "unrelated")
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        screen = await open_list(pilot, app)
        table = screen.query_one(DataTable)
        table.move_cursor(row=table.get_row_index(str(old)))
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is app.chat)
        await pilot.pause(0.2)
        users = app.chat.query(UserMessage)
        assert [u.text for u in users] == ["what colour is the sea?"]
        assert [r.text for r in app.chat.query(AssistantMessage)] == ["Blue, mostly."]
        await say(pilot, "and the sky?")
        session = backend(app).session
        assert session is not None and session.messages[0].content == "what colour is the sea?"
        assert len(session.messages) == 4
        assert contents(store, old)[:3] == [
            ("user", "what colour is the sea?"),
            ("assistant", "Blue, mostly."),
            ("user", "and the sky?"),
        ]
        assert contents(store, old)[3] == ("assistant", session.messages[3].content)
        assert len(store.list_conversations()) == 2  # no new conversation was started


async def test_rename_delete_with_confirmation_and_export(
    app: LlamaTuiApp, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = saved(data)
    conv = store.new_conversation("first title", {})
    store.add_message(conv, "user", "What is 2+2?")
    store.add_message(conv, "assistant", "4")
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        screen = await open_list(pilot, app)
        # rename
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen))
        answer = app.screen.query_one(PromptInput)
        assert answer.text == "first title"
        answer.text = ""
        await pilot.press(*"[bold]sums[/]", "enter")
        await wait_for(pilot, lambda: app.screen is screen)
        assert store.get(conv)["title"] == "[bold]sums[/]"  # as typed, markup and all
        assert str(screen.query_one(DataTable).get_row_at(0)[1]) == "[bold]sums[/]"
        # rename cancelled: unchanged
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
        assert store.get(conv)["title"] == "[bold]sums[/]"
        # export Markdown and JSON, into the current directory
        await pilot.press("m")
        md = tmp_path / f"llama-tui-conversation-{conv}.md"
        assert md.read_text() == store.export_markdown(conv)
        assert "## user\n\nWhat is 2+2?" in md.read_text() and str(md) in status(screen)
        await pilot.press("j")
        exported = json.loads((tmp_path / f"llama-tui-conversation-{conv}.json").read_text())
        assert [m["content"] for m in exported["messages"]] == ["What is 2+2?", "4"]
        # delete: asks first; n and Esc keep it, y deletes it
        for keep in ("n", "escape"):
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press(keep)
            await wait_for(pilot, lambda: app.screen is screen)
            assert [r["id"] for r in store.list_conversations()] == [conv]
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: app.screen is screen)
        assert store.list_conversations() == []
        assert screen.query_one(DataTable).row_count == 0
        await pilot.press("d")  # nothing left: one line, no traceback
        assert "no conversation to delete" in status(screen)


async def test_editing_an_earlier_message_forks_and_keeps_the_original(
    app: LlamaTuiApp, data: Path
) -> None:
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        await say(pilot, "first question")
        await say(pilot, "second question")
        store = saved(data)
        [original] = [r["id"] for r in store.list_conversations()]
        before = contents(store, original)
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, EditMessageScreen))
        options = app.screen.query_one(OptionList)
        assert options.option_count == 2
        options.highlighted = 0
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, TextPromptScreen))
        answer = app.screen.query_one(PromptInput)
        assert answer.text == "first question"
        await pilot.press(*", edited", "enter")
        await wait_for(pilot, lambda: app.screen is app.chat)
        await wait_for(pilot, idle(app))
        await pilot.pause(0.1)
        session = backend(app).session
        assert session is not None and len(session.messages) == 2
        assert session.messages[0].content == "first question, edited"
        assert [u.text for u in app.chat.query(UserMessage)] == ["first question, edited"]
        assert contents(store, original) == before  # the old branch is intact
        fork = next(r for r in store.list_conversations() if r["id"] != original)
        assert (fork["parent_id"], fork["forked_at"]) == (original, 0)
        assert contents(store, fork["id"]) == [(m.role, m.content) for m in session.messages]
        screen = await open_list(pilot, app)
        row = screen.query_one(DataTable).get_row(str(fork["id"]))
        assert str(row[4]) == f"↳ fork of #{original}" and str(row[0]).startswith("●")


async def test_trimmed_messages_are_dimmed_and_counted(tiny_config: Path, data: Path) -> None:
    overrides = {"context_length": 160, "max_new_tokens": 24}
    app = make_app(config_path=tiny_config, overrides=overrides, cursor_blink=False, data_dir=data)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        session = None
        for n in range(12):
            await say(pilot, f"message number {n}")
            session = backend(app).session
            assert session is not None
            if session.context_start > 2:
                break
        assert session is not None and session.dropped_messages > 0
        await pilot.pause(0.6)
        blocks = app.chat.conversation.messages()
        dimmed = [b for b in blocks if b.has_class("-dropped")]
        assert len(dimmed) == session.dropped_messages
        assert blocks[0] in dimmed and blocks[-1] not in dimmed
        first = blocks[0]
        assert isinstance(first, UserMessage) and "out of context" in str(first.render())
        turns = sum(isinstance(b, UserMessage) for b in dimmed)
        rows = dict(metric_lines(app.chat.stats))
        assert rows["dropped"] == f"{session.dropped_messages} msgs ({turns} turns)"
        context = str(app.chat.query_one("#context-caption", Label).render())
        assert context == f"context {context_text(app.chat.stats)}" and " / 160 tokens" in context
        shown = str(app.chat.query_one("#figures").render())
        assert f"{session.dropped_messages} msgs" in shown


async def pick_message(pilot, app: LlamaTuiApp, option: int) -> str:  # type: ignore[no-untyped-def]
    """F8, then Enter on `option` of the list; returns the option's label."""
    await pilot.press("f8")
    await wait_for(pilot, lambda: isinstance(app.screen, PinMessageScreen))
    options = app.screen.query_one(OptionList)
    options.highlighted = option
    label = str(options.get_option_at_index(option).prompt)
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.screen is app.chat)
    return label


async def test_a_pinned_message_survives_trims_until_unpinned(
    tiny_config: Path, data: Path
) -> None:
    overrides = {"context_length": 160, "max_new_tokens": 24}
    app = make_app(config_path=tiny_config, overrides=overrides, cursor_blink=False, data_dir=data)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        await say(pilot, "remember: the code is 42")
        assert await pick_message(pilot, app, 0) == "1. remember: the code is 42"
        await wait_for(pilot, lambda: app.chat.controller.pinned == (0,))
        first = app.chat.conversation.messages()[0]
        assert first.has_class("-pinned") and "[pinned]" in str(first.render())
        session = backend(app).session
        assert session is not None
        for n in range(12):
            await say(pilot, f"message number {n}")
            if session.context_start > 2:
                break
        assert session.context_start > 2 and session.pinned == {0}
        assert session.visible(session.messages)[0].content == "remember: the code is 42"
        await pilot.pause(0.6)
        blocks = app.chat.conversation.messages()
        dimmed = [b for b in blocks if b.has_class("-dropped")]
        assert blocks[0] not in dimmed and blocks[1] in dimmed  # the reply was not pinned
        assert len(dimmed) == session.dropped_messages == session.context_start - 1
        assert dict(metric_lines(app.chat.stats))["dropped"].startswith(f"{len(dimmed)} msgs")
        # unpinning lets it go: dimmed at once, out of the next prompt
        assert await pick_message(pilot, app, 0) == "1. [pinned] remember: the code is 42"
        await wait_for(pilot, lambda: app.chat.controller.pinned == ())
        assert first.has_class("-dropped") and not first.has_class("-pinned")
        assert "[out of context]" in str(first.render())
        await say(pilot, "one more")
        assert session.pinned == set()
        assert session.visible(session.messages)[0].content != "remember: the code is 42"


async def test_a_failed_turn_is_not_saved_and_its_text_comes_back(
    tiny_config: Path, data: Path
) -> None:
    # a system prompt longer than the whole prompt budget fails every turn (over-long user
    # messages are cut instead); the failed turn must leave nothing behind but its text
    overrides = {"context_length": 64, "max_new_tokens": 8, "system_prompt": "rule " * 80}
    app = make_app(config_path=tiny_config, overrides=overrides, cursor_blink=False, data_dir=data)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        reply = await say(pilot, "hi there")
        assert reply.status.startswith("failed:") and "system_prompt" in reply.status
        assert app.chat.query_one(PromptInput).text == "hi there"  # back in the prompt, not lost
        store = saved(data)
        assert all(row["message_count"] == 0 for row in store.list_conversations())


async def test_resumed_chat_ending_unanswered_can_be_regenerated(
    app: LlamaTuiApp, data: Path
) -> None:
    """`chat --plain` keeps a user message whose turn failed: the app answers it with Ctrl+R."""
    store = saved(data)
    conv = store.new_conversation("left hanging", {})
    for role, text in [("user", "a"), ("assistant", "b"), ("user", "c")]:
        store.add_message(conv, role, text)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        await app.chat.saved.resume(conv)
        await pilot.pause(0.2)
        app.chat.query_one(PromptInput).focus()
        await pilot.press("ctrl+r")
        await wait_for(pilot, idle(app))
        await pilot.pause(0.1)
        session = backend(app).session
        assert session is not None and [m.content for m in session.messages[:3]] == ["a", "b", "c"]
        assert len(session.messages) == 4
        assert contents(store, conv) == [(m.role, m.content) for m in session.messages]
        shown = [b.text for b in app.chat.conversation.messages()]
        assert shown == [m.content for m in session.messages]


async def test_an_over_long_message_is_cut_with_a_visible_notice(
    tiny_config: Path, data: Path
) -> None:
    overrides = {"context_length": 64, "max_new_tokens": 8}
    app = make_app(config_path=tiny_config, overrides=overrides, cursor_blink=False, data_dir=data)
    text = " ".join(f"word{n}" for n in range(80))  # far over the 56-token prompt budget
    async with app.run_test(size=(140, 40), notifications=True) as pilot:
        await wait_for(pilot, idle(app))
        await say(pilot, text)
        await wait_for(pilot, lambda: bool(app.screen.query("Toast")))
        toasts = [str(t.render()) for t in app.screen.query("Toast")]
        assert any("tokens from the middle of your message were cut" in t for t in toasts)
        session = backend(app).session
        assert session is not None and session.messages[0].content == text  # nothing lost
        blocks = app.chat.conversation.messages()
        assert isinstance(blocks[0], UserMessage) and "word79" in str(blocks[0].render())


async def test_slash_filters_the_list_live_and_enter_opens_the_chat_at_the_hit(
    app: LlamaTuiApp, data: Path
) -> None:
    store = saved(data)
    sea = store.new_conversation("about the sea", {})
    for i in range(12):  # a long chat: the hit is far from its end
        store.add_message(sea, "user", f"question {i} about waves")
        store.add_message(sea, "assistant", f"answer {i}: " + "water " * 30)
    store.add_message(sea, "user", "what lives in a coral reef?")
    store.add_message(sea, "assistant", "Parrotfish, mostly.")
    other = store.new_conversation("cooking", {})
    store.add_message(other, "user", "how long to boil an egg?")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, idle(app))
        screen = await open_list(pilot, app)
        table = screen.query_one(DataTable)
        assert table.row_count == 2
        await pilot.press("slash")
        await pilot.pause(0.05)
        assert isinstance(app.focused, Input) and app.focused.id == "filter"
        await pilot.press(*"parrot")  # a word start, as typed: prefix match
        await pilot.pause(0.1)
        assert table.row_count == 1
        row = [str(c) for c in table.get_row_at(0)]
        assert row[:3] == [str(sea), "about the sea", "26 assistant"]
        assert "Parrotfish" in row[3]
        assert "1 matching messages for 'parrot'" in status(screen)
        await pilot.press("escape")  # clears the search first
        await pilot.pause(0.05)
        assert table.row_count == 2 and isinstance(app.screen, ConversationsScreen)
        await pilot.press("slash", *"egg")
        await pilot.pause(0.1)
        assert [str(c) for c in table.get_row_at(0)][0] == str(other)
        await pilot.press("backspace", "backspace", "backspace", *"coral", "enter")
        await wait_for(pilot, lambda: app.screen is app.chat)
        await pilot.pause(0.3)
        pane = app.chat.conversation
        hit = next(w for w in pane.messages() if w.index == 24)
        assert hit.text == "what lives in a coral reef?"
        assert pane.scroll_y > 0 and pane.scroll_y <= hit.virtual_region.y  # scrolled there
        assert len(app.chat.query(UserMessage)) == 13
