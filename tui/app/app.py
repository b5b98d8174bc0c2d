"""The Textual app: CSS, app-wide keys, themes, the command palette, and one chat screen."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from engine import Backend, EngineQueue, ProfileBackend, find_config_path
from tui.app.bridge import EngineBridge
from tui.app.profiles import ProfileState
from tui.app.screens.chat import ChatScreen
from tui.app.themes import DEFAULT_THEME, load_themes

UI_NICE = 5  # scheduling niceness of the UI thread relative to the engine's threads


def yield_cpu_to_engine() -> None:
    """Lower the calling (UI) thread's priority, on Linux where niceness is per thread.

    On a machine with few cores the engine's torch threads and the UI thread compete; a
    parallel matmul waits for its slowest thread, so every redraw that preempts one of them
    stalls the whole decode step. With the UI thread slightly nicer, redraws run in the gaps.
    """
    if sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UI_NICE)
    except OSError:  # not permitted in some sandboxes: keep the default priority
        pass


class LlamaTuiApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "llama-tui"
    ENABLE_COMMAND_PALETTE = True
    BINDINGS = [
        Binding("f1", "toggle_keys", "Keys"),
    ]

    def __init__(
        self,
        state: ProfileState,
        backend: Backend,
        *,
        cursor_blink: bool = True,
        data_dir: Path | None = None,
        save: bool = True,
    ) -> None:
        super().__init__()
        self.state = state
        self.backend = backend
        self.cursor_blink = cursor_blink
        self.data_dir = data_dir  # where conversations are saved (None: the default place)
        self.save = save  # False: --no-save
        self.queue: EngineQueue | None = None
        self.llama_themes = load_themes()
        for theme in self.llama_themes:
            self.register_theme(theme)
        self.theme = DEFAULT_THEME

    def on_mount(self) -> None:
        self.queue = EngineQueue(self.backend)  # its engine thread keeps the normal priority
        yield_cpu_to_engine()
        bridge = EngineBridge(self.queue)
        self.push_screen(
            ChatScreen(
                self.state,
                bridge,
                cursor_blink=self.cursor_blink,
                data_dir=self.data_dir,
                save=self.save,
            )
        )

    def on_unmount(self) -> None:
        if self.queue is not None:
            self.queue.close(timeout=2.0)

    @property
    def chat(self) -> ChatScreen:
        return self.get_screen_stack_chat()

    def get_screen_stack_chat(self) -> ChatScreen:
        for screen in reversed(self.screen_stack):
            if isinstance(screen, ChatScreen):
                return screen
        raise LookupError("the chat screen is not open")

    def action_toggle_keys(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        chat = self.chat
        for name in self.state.names:
            yield SystemCommand(
                f"Switch profile: {name}",
                f"make profile '{name}' active",
                lambda name=name: chat.profiles.switch(name),  # type: ignore[misc]
            )
        for theme in self.llama_themes:
            yield SystemCommand(
                f"Switch theme: {theme.name}",
                "colours only; the conversation stays",
                lambda name=theme.name: setattr(self, "theme", name),  # type: ignore[misc]
            )
        yield SystemCommand(
            "New conversation", "forget the chat so far (ctrl+n)", chat.action_new_conversation
        )
        yield SystemCommand(
            "Conversations",
            "saved chats: resume, rename, delete, export (ctrl+o)",
            chat.action_conversations,
        )
        yield SystemCommand(
            "Edit an earlier message",
            "the chat forks there; the saved original stays (f5)",
            chat.action_edit_message,
        )
        yield SystemCommand(
            "Pin or unpin a message",
            "trimming keeps a pinned message in the model's context (f8)",
            chat.action_pin_message,
        )
        yield SystemCommand(
            "Reply details",
            "where the last reply's time went, its energy and cost, throughput plots (f9)",
            chat.action_reply_details,
        )
        yield SystemCommand(
            "Copy last reply",
            "to the clipboard with OSC 52, works over SSH (ctrl+y)",
            chat.action_copy_reply,
        )
        yield SystemCommand(
            "Copy a code block",
            "the last reply's next fenced block, OSC 52 (ctrl+b, again for the next)",
            chat.action_copy_code,
        )
        yield SystemCommand(
            "Regenerate last reply", "answer the last prompt again (ctrl+r)", chat.action_regenerate
        )
        yield SystemCommand(
            "Show keys", "every key and what it does (f1)", self.action_show_help_panel
        )
        yield from super().get_system_commands(screen)


def make_app(
    profile_name: str | None = None,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    backend: Backend | None = None,
    max_loaded_models: int | None = None,
    cursor_blink: bool = True,
    data_dir: Path | None = None,
    save: bool = True,
) -> LlamaTuiApp:
    """The app for a profile of a config file (found as the CLI finds it) and CLI overrides.

    Raises ConfigError (one line) for a bad file, profile name or override.
    """
    state = ProfileState.open(find_config_path(config_path), profile_name, overrides or {})
    keep = max_loaded_models or state.config.max_loaded_models  # from the config file by default
    return LlamaTuiApp(
        state,
        backend or ProfileBackend(keep),
        cursor_blink=cursor_blink,
        data_dir=data_dir,
        save=save,
    )
