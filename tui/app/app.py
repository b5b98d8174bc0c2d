"""The Textual app: CSS, app-wide keys, themes, the command palette, and one chat screen."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
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
from tui.terminal import mute_lost_terminal

UI_NICE = 5  # scheduling niceness of the UI thread relative to the engine's threads
STOP_WAIT_S = 1.0  # after SIGTERM/SIGHUP: how long the cancelled reply may take to end
HARD_EXIT_S = 1.6  # and when the process leaves even if the terminal's teardown hangs
HANGUP_GRACE_S = 0.3  # after SIGHUP, from the chat's end: there is no terminal to restore


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
        self.chat_screen: ChatScreen | None = None
        self.exit_notes: list[str] = []  # lines for stderr once the screen is gone
        self.ending: int | None = None  # the signal (SIGTERM, SIGHUP) the app is ending for
        self._chat_lock, self._chat_done = threading.Lock(), False
        self._ended = threading.Event()  # after a signal: the reply has ended, exit was asked
        self.llama_themes = load_themes()
        for theme in self.llama_themes:
            self.register_theme(theme)
        self.theme = DEFAULT_THEME

    def on_mount(self) -> None:
        self.queue = EngineQueue(self.backend)  # its engine thread keeps the normal priority
        yield_cpu_to_engine()
        bridge = EngineBridge(self.queue)
        self.chat_screen = ChatScreen(
            self.state,
            bridge,
            cursor_blink=self.cursor_blink,
            data_dir=self.data_dir,
            save=self.save,
        )
        self.push_screen(self.chat_screen)
        if not self.is_headless:  # a real terminal: SIGTERM and SIGHUP end the chat cleanly
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(signum, self.on_ending_signal, signum)

    def on_ending_signal(self, signum: int) -> None:
        """SIGTERM, or SIGHUP (the terminal or SSH session closed): stop the reply, let it end
        as a stopped reply (saved with its figures), close the store and leave."""
        if self.ending is not None:
            return
        self.ending = signum
        if signum == signal.SIGHUP:  # the terminal is gone: Textual's last writes go nowhere
            mute_lost_terminal()
        if self.queue is not None:
            self.queue.cancel_all()
        threading.Thread(target=self._hard_exit, args=(signum,), daemon=True).start()
        self.run_worker(self._end(signum), name="ending", exit_on_error=False)

    async def _end(self, signum: int) -> None:
        chat = self.chat_screen
        deadline = time.monotonic() + STOP_WAIT_S
        while chat is not None and chat.controller.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._ended.set()
        self.exit(return_code=128 + signum)

    def _hard_exit(self, signum: int) -> None:
        """A terminal that is gone can leave Textual's teardown waiting on a write: leave
        anyway, HARD_EXIT_S after the signal, or after SIGHUP (nothing left to restore on the
        terminal) HANGUP_GRACE_S after the reply ended; the chat is closed first."""
        t0 = time.monotonic()
        if signum == signal.SIGHUP and self._ended.wait(HARD_EXIT_S):
            time.sleep(min(HANGUP_GRACE_S, max(0.0, HARD_EXIT_S - (time.monotonic() - t0))))
        else:
            time.sleep(HARD_EXIT_S)
        self.close_chat()
        os._exit(128 + signum)

    def close_chat(self) -> None:
        """Stop the engine and close the chat's store (what it could not write is exported);
        its last lines are kept for stderr. Once only (the hard exit's thread may get here)."""
        with self._chat_lock:
            if self._chat_done:
                return
            self._chat_done = True
        if self.queue is not None:
            self.queue.close(timeout=1.0)
        chat = self.chat_screen
        if chat is not None:
            chat.controller.notify = lambda text, kind: self.exit_notes.append(text)
            chat.controller.close()

    def on_unmount(self) -> None:
        self.close_chat()

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
        for persona in chat.state.config.prompts.values():
            yield SystemCommand(
                f"Persona: {persona.name}",
                " ".join(persona.system.split())[:70],
                lambda name=persona.name: chat.use_persona(name),  # type: ignore[misc]
            )
        if chat.state.persona is not None:
            yield SystemCommand(
                "Persona: none",
                "back to the profile's own system prompt",
                lambda: chat.use_persona(None),
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
            "Attach a file",
            "a text file into your next message, with path completion (ctrl+t)",
            chat.action_attach_file,
        )
        yield SystemCommand(
            "Pin or unpin a message",
            "trimming keeps a pinned message in the model's context (f8)",
            chat.action_pin_message,
        )
        yield SystemCommand(
            "Reply details",
            "where a reply's time went, its energy and cost, plots; ← → other replies (f9)",
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
