"""Files in the app: Ctrl+T's path prompt with completion, the collapsed file block under the
message (also when the chat is resumed or forked), and a resumed chat's persona. Real app, tiny
model, real files in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, Static

from engine.store import DB_NAME, ConversationStore
from tests.tui.test_app import backend, idle, say, wait_for
from tui.app.app import LlamaTuiApp, make_app
from tui.app.screens.attach_file import AttachFileScreen
from tui.app.widgets.message import FileBlock, Notice, UserMessage
from tui.app.widgets.prompt import PromptInput

SECRET = "line one\nthe secret word is pineapple\nline three\n"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder the path prompt starts in, holding notes.txt and a sub-folder."""
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "notes.txt").write_text(SECRET)
    (work / "logs" / "run.log").write_text("ok\n")
    monkeypatch.chdir(work)
    return work


def notices(app: LlamaTuiApp) -> list[str]:
    return [str(n.render()) for n in app.chat.query(Notice)]


async def open_path_prompt(pilot, app: LlamaTuiApp, typed: str) -> None:  # type: ignore[no-untyped-def]
    """Ctrl+T, then `typed` into the path prompt, and a pause for its completions."""
    await pilot.press("ctrl+t")
    await wait_for(pilot, lambda: isinstance(app.screen, AttachFileScreen))
    await pilot.pause(0.1)
    await pilot.press(*typed)
    await pilot.pause(0.2)


async def attach_notes(pilot, app: LlamaTuiApp, folder: Path) -> None:  # type: ignore[no-untyped-def]
    """notes.txt attached for the next message, as /file does it."""
    app.chat.attach_file(str(folder / "notes.txt"))
    await wait_for(pilot, lambda: any("attached notes.txt" in n for n in notices(app)))


async def test_ctrl_t_completes_a_path_and_the_file_shows_collapsed(
    tiny_config: Path, data: Path, folder: Path
) -> None:
    app = make_app(config_path=tiny_config, cursor_blink=False, data_dir=data)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, idle(app))
        titles = [c.title for c in app.get_system_commands(app.chat)]
        assert "Attach a file" in titles  # the palette has it too
        app.chat.query_one(PromptInput).focus()
        await open_path_prompt(pilot, app, "no")  # from the prompt: the TextArea leaves Ctrl+T
        await pilot.press("tab")  # the one match
        await pilot.pause(0.1)
        assert app.screen.query_one("#path", Input).value == "notes.txt"
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("attached notes.txt" in n for n in notices(app)))
        assert not isinstance(app.screen, AttachFileScreen)

        await say(pilot, "what is the secret word?")
        [user] = app.chat.query(UserMessage)
        assert user.text == "what is the secret word?"
        [block] = app.chat.query(FileBlock)
        assert block.collapsed and block.title.startswith("file notes.txt · 49 B · ")
        assert block.title.endswith(" tokens")
        assert str(block.query_one(".file-text", Static).render()) == SECRET.rstrip("\n")
        session = backend(app).session
        assert session is not None and "pineapple" in session.messages[0].content


async def test_the_path_prompt_completes_folders_and_cancels(
    tiny_config: Path, data: Path, folder: Path
) -> None:
    app = make_app(config_path=tiny_config, cursor_blink=False, data_dir=data)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, idle(app))
        await open_path_prompt(pilot, app, "lo")
        await pilot.press("tab")  # a folder: completes with its slash, the list stays open
        await pilot.pause(0.2)
        await pilot.press("tab")
        await pilot.pause(0.1)
        field = app.screen.query_one("#path", Input)
        assert field.value == "logs/run.log"
        await pilot.press("escape", "escape")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, AttachFileScreen)
        assert not any("attached" in n for n in notices(app))  # nothing attached


async def test_a_resumed_chat_shows_its_files_and_takes_up_its_persona(
    tiny_config: Path, data: Path, folder: Path
) -> None:
    with tiny_config.open("a") as f:
        f.write('\n[prompts.pirate]\nsystem = "You are a pirate."\n')
    app = make_app(config_path=tiny_config, cursor_blink=False, data_dir=data)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        app.chat.use_persona("pirate")
        await pilot.pause(0.2)
        await wait_for(pilot, idle(app))
        effective = str(app.chat.query_one("#effective", Static).render())
        assert "persona" in effective and "pirate ([prompts.pirate])" in effective
        await attach_notes(pilot, app, folder)
        await say(pilot, "the word?")
        await say(pilot, "again")
        conv = app.chat.controller.conv
        assert conv is not None

        await app.chat.saved.start_new()
        app.chat.use_persona(None)
        await pilot.pause(0.2)
        await wait_for(pilot, idle(app))
        assert "persona" not in str(app.chat.query_one("#effective", Static).render())
        assert not app.chat.query(FileBlock)

        await app.chat.saved.resume(conv)
        await pilot.pause(0.2)
        await wait_for(pilot, idle(app))
        users = list(app.chat.query(UserMessage))
        assert [u.text for u in users] == ["the word?", "again"]  # as typed, files apart
        [block] = app.chat.query(FileBlock)
        assert block.title.startswith("file notes.txt · 49 B")
        assert app.chat.state.persona == "pirate"  # the chat's own persona again
        profile = app.chat.controller.profile
        assert profile is not None and profile.system_prompt == "You are a pirate."
        assert "pirate ([prompts.pirate])" in str(app.chat.query_one("#effective").render())


async def test_a_fork_keeps_the_files_of_the_messages_it_copies(
    tiny_config: Path, data: Path, folder: Path
) -> None:
    app = make_app(config_path=tiny_config, cursor_blink=False, data_dir=data)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        await attach_notes(pilot, app, folder)
        await say(pilot, "first")
        await say(pilot, "second")
        parent = app.chat.controller.conv
        app.chat.send("second, edited", edit=2)
        await pilot.pause(0.2)
        await wait_for(pilot, idle(app))
        fork = app.chat.controller.conv
        assert fork is not None and fork != parent
    store = ConversationStore(data / DB_NAME)
    first = store.messages(fork)[0]
    [row] = store.attachments(first["id"])
    assert row["path"] == str(folder / "notes.txt") and "pineapple" in row["text"]
    assert store.messages(fork)[2]["content"] == "second, edited"
