"""The config file saved with a broken value while a reply streams: the app shows `file:line`,
keeps the last good profile, and the running reply goes on untouched to its end."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from textual.widgets import Static

from tests.tui.test_app import idle, wait_for
from tui.app.app import make_app


async def test_a_broken_save_mid_reply_names_the_line_and_changes_nothing(
    tiny_config: Path,
) -> None:
    good = tiny_config.read_text().replace(
        "[profiles.long]\ncontext_length = 4096\nmax_new_tokens = 4000\n",
        "[profiles.long]\ncontext_length = 4096\nmax_new_tokens = 2000\n",  # seconds of streaming
    )
    tiny_config.write_text(good)
    app = make_app("long", tiny_config, cursor_blink=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, idle(app))
        before = app.chat.controller.profile
        assert before is not None and before.max_new_tokens == 2000
        # sent as Enter sends it, and the save read before this test yields to the app again:
        # a pilot's key press waits until the app is idle, which on a fast VM came after the
        # tiny model's whole 2,000-token reply (fresh-clone CI runs, twice)
        app.chat.send("tell me a long story")
        broken = good.replace("max_new_tokens = 2000\n", 'max_new_tokens = 2000\ntop_p = "wide"\n')
        tiny_config.write_text(broken)
        line = broken.splitlines().index('top_p = "wide"') + 1
        error = app.chat.query_one("#config-error", Static)
        # what the app's 1 s timer runs, called at once: a fast CPU ends 2,000 tiny-model
        # tokens before the timer's next tick
        app.chat.profiles.watch_file()
        streaming = app.chat.busy  # the save was read mid-reply
        await pilot.pause(0.05)
        assert "not reloaded" in str(error.render())
        shown = str(error.render())
        assert f"llama-tui.toml:{line}" in shown and "top_p" in shown
        assert streaming
        assert app.chat.controller.profile == before  # the last good profile is kept
        await wait_for(pilot, idle(app), timeout=120)
        await pilot.pause(0.1)
        reply = app.chat.conversation.last_reply()
        assert reply is not None and reply.status == "reached max_new_tokens"
        assert app.chat.stats.last.generated_tokens == 2000  # type: ignore[union-attr]
        assert replace(app.chat.controller.profile) == before  # type: ignore[arg-type]
