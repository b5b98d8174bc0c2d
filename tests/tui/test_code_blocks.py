"""Ctrl+B copies the last reply's code blocks one after another with OSC 52: the sequence the
driver writes is decoded, and the toast names the block's language and line count."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from tests.engine.test_search import THREE_BLOCKS
from tui.app.app import make_app
from tui.app.screens.chat import ChatScreen

OSC52 = re.compile(r"\x1b\]52;c;([A-Za-z0-9+/=]*)\x07")


async def test_ctrl_b_cycles_through_the_code_blocks(tiny_config: Path, tmp_path: Path) -> None:
    app = make_app(config_path=tiny_config, cursor_blink=False, data_dir=tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await screen.conversation.add_assistant("").show(THREE_BLOCKS, False)
        written: list[str] = []
        driver = app._driver
        assert driver is not None
        real = driver.write
        driver.write = lambda data: (written.append(data), real(data))[1]  # type: ignore[method-assign]
        toasts = []
        for _ in range(4):
            await pilot.press("ctrl+b")
            await pilot.pause()
            toasts.append(list(app._notifications)[-1].message)
        copied = [base64.b64decode(m).decode() for m in OSC52.findall("".join(written))]
    assert copied == [
        "def add(a, b):\n    return a + b",
        "python add.py",
        "key = 1\n```not a fence end```",
        "def add(a, b):\n    return a + b",  # round again
    ]
    assert toasts == [
        "copied code block 1/3 (python, 2 lines)",
        "copied code block 2/3 (bash, 1 line)",
        "copied code block 3/3 (no language, 2 lines)",
        "copied code block 1/3 (python, 2 lines)",
    ]
