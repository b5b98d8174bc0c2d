"""The chat screen: the panes and the prompt, and what their keys do.

What is sent, saved and kept is the controller's (engine.Conversation). Beside the screen:
profile switching (tui/app/profile_switch.py), new and saved conversations (saved_chats.py
here) and the engine updates drawn (tui/app/turn_view.py).
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from engine import ConfigError, Conversation, Request, Ticket, UserError, code_blocks, open_store
from tui.app.bridge import EngineBridge
from tui.app.messages import EngineUpdate, ProfilePicked, PromptSubmitted, SettingEdited
from tui.app.profile_switch import ProfileSwitcher
from tui.app.profiles import ProfileState
from tui.app.screens.attach_file import AttachFileScreen
from tui.app.screens.edit_message import EditMessageScreen
from tui.app.screens.pin_message import PinMessageScreen
from tui.app.screens.reply_details import ReplyDetailsScreen
from tui.app.screens.saved_chats import SavedChats
from tui.app.stats import LiveStats
from tui.app.turn_view import TurnView
from tui.app.widgets.config_pane import ConfigPane
from tui.app.widgets.conversation import ConversationPane
from tui.app.widgets.metrics_pane import MetricsPane
from tui.app.widgets.metrics_strip import MetricsStrip
from tui.app.widgets.prompt import PromptInput

NARROW = 110  # below this many columns: a metrics strip; F2/F3 open a pane as a bottom panel
WATCH_S = 1.0  # how often the config file's mtime is checked
WAIT = "wait for the reply to finish (Esc stops it)"


class ChatScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "cancel", "Stop"),
        Binding("ctrl+r", "regenerate", "Regen"),
        Binding("ctrl+n", "new_conversation", "New"),
        Binding("f2", "toggle_pane('config')", "Config"),
        Binding("f3", "toggle_pane('metrics')", "Metrics"),
        Binding("ctrl+o", "conversations", "Chats"),
        # in F1 and the palette: the footer fits 80 columns with the keys above
        Binding("f4", "pick_profile", "Profile", show=False),
        Binding("f5", "edit_message", "Edit msg", show=False),
        Binding("ctrl+g", "continue_reply", "Continue", show=False),  # "go on"
        Binding("f8", "pin_message", "Pin msg", show=False),
        Binding("f9", "reply_details", "Details", show=False),
        Binding("ctrl+y", "copy_reply", "Copy reply", show=False),
        Binding("ctrl+b", "copy_code", "Copy code", show=False),
        Binding("ctrl+t", "attach_file", "Attach file", show=False),
        Binding("f6", "focus_prompt", "Prompt", show=False),
    ]

    def __init__(
        self,
        state: ProfileState,
        bridge: EngineBridge,
        *,
        cursor_blink: bool,
        data_dir: Path | None = None,
        save: bool = True,
    ) -> None:
        super().__init__()
        self.state, self.bridge = state, bridge
        self.data_dir = data_dir  # --data-dir (None: $LLAMA_TUI_DATA_DIR, else the user's)
        self.save = save  # False: --no-save
        self.stats = LiveStats()
        self.cursor_blink = cursor_blink
        self.controller = Conversation(bridge.queue, submit=self._submit, notify=self._notice)
        self.profiles = ProfileSwitcher(self, self.controller, state, self.stats)
        self.saved = SavedChats(
            self,
            self.controller,
            self.stats,
            data_dir=data_dir,
            cursor_blink=cursor_blink,
            resume_persona=self.resume_persona,
        )
        self.view = TurnView(self, self.controller, self.stats)
        self.narrow: bool | None = None
        self._code: tuple[str, int] = ("", -1)  # (reply text, index of the block copied last)

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="chat"):
                yield ConversationPane(id="conversation")
                yield MetricsStrip(self.stats, id="strip")
                yield PromptInput(id="prompt", cursor_blink=self.cursor_blink)
            with Vertical(id="sidebar"):
                yield ConfigPane(self.state.names, self.state.name, id="config")
                yield MetricsPane(self.stats, id="metrics")
        yield Footer(compact=True)  # fits 80 columns

    @property
    def conversation(self) -> ConversationPane:
        return self.query_one(ConversationPane)

    @property
    def config_pane(self) -> ConfigPane:
        return self.query_one(ConfigPane)

    @property
    def busy(self) -> bool:
        return bool(self.conversation.replies or self.profiles.loads)

    def on_mount(self) -> None:
        if self.save:
            try:
                store = self.controller.store = open_store(self.data_dir)
                if store.notice:  # moved aside, or a newer release's store opened read-only
                    self.conversation.add_notice(store.notice, "error")
            except UserError as exc:
                self.conversation.add_notice(f"this chat is not saved: {exc}", "error")
        self.profiles.apply(self.state.profile())
        self.query_one(PromptInput).focus()
        self.set_interval(WATCH_S, self.profiles.watch_file)
        self.set_interval(1.0, self.update_subtitle)

    def on_resize(self) -> None:
        narrow = self.size.width < NARROW
        if narrow != self.narrow:
            self.narrow = narrow
            self.set_class(narrow, "-narrow")  # app.tcss: the strip shows, the panes dock below
            self.query_one("#config").display = not narrow
            self.query_one("#metrics").display = not narrow
            self._sync_sidebar()

    def _sync_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        sidebar.display = any(child.display for child in sidebar.children)

    def _submit(self, request: Request) -> Ticket:
        return self.bridge.submit(request, self)  # its events come back as EngineUpdates

    def _notice(self, text: str, kind: str) -> None:
        if kind == "error":  # e.g. saving stopped: stays in the conversation
            self.conversation.add_notice(text, "error")
        else:
            self.notify(text)

    def on_profile_picked(self, event: ProfilePicked) -> None:
        self.profiles.switch(event.name)

    def on_setting_edited(self, event: SettingEdited) -> None:
        self.profiles.edit(event)

    # Keys -----------------------------------------------------------------------------------

    def on_prompt_submitted(self, event: PromptSubmitted) -> None:
        words = event.text.split(maxsplit=1)
        if words and words[0] == "/file":  # a file for the next message, as in line mode
            self.attach_file(words[1] if len(words) > 1 else "")
            return
        self.send(event.text)

    def attach_file(self, path: str) -> None:
        """Read and count `path` (in a thread: the engine counts its tokens) for the next user
        message; a notice shows what goes with it, or one line says why it cannot."""
        pane = self.conversation
        if not path.strip():
            pane.add_notice("usage: /file PATH (a text file, sent with your next message)", "error")
            return
        if self.busy:
            pane.add_notice(f"/file: {WAIT}", "error")
            return

        def attach() -> None:
            try:
                file = self.controller.attach(Path(path.strip()).expanduser())
            except UserError as exc:
                self.app.call_from_thread(pane.add_notice, f"/file: {exc}", "error")
                return
            text = f"attached {file.describe()}: it goes with your next message"
            self.app.call_from_thread(pane.add_notice, text)

        self.run_worker(attach, name="attach-file", thread=True, exit_on_error=False)

    def action_attach_file(self) -> None:
        """A path prompt with completion; the file goes with the next message."""
        if self.busy:
            self.conversation.add_notice(f"attach: {WAIT}", "error")
            return
        self.app.push_screen(AttachFileScreen(), self._on_path)

    def _on_path(self, path: str | None) -> None:
        if path is not None:
            self.attach_file(path)

    def send(self, text: str, edit: int | None = None) -> None:
        """A user turn (edit: replacing message `edit`), its reply drawn as it streams."""
        turn = self.controller.send(text) if edit is None else self.controller.edit(edit, text)
        user = self.conversation.add_user(text, turn.attachments)
        self.conversation.add_turn(turn.id, user, len(self.profiles.loads))

    def action_cancel(self) -> None:
        if not self.bridge.queue.cancel_running():
            self.notify("nothing is running", timeout=2)

    def action_regenerate(self) -> None:
        last = self.conversation.last_reply()
        if self.busy or last is None:
            self.notify(f"regenerate: {WAIT if last else 'there is no reply yet'}", timeout=3)
            return
        user = self.conversation.drop_last_reply()
        turn = self.controller.regenerate()
        self.conversation.add_turn(turn.id, user, len(self.profiles.loads))

    def use_persona(self, name: str | None) -> None:
        """Put persona `name` ([prompts.NAME]; None: the profile's own prompt) over the active
        profile, for the next turns; the saved chat records it."""
        try:
            profile = self.state.choose_persona(name)
        except ConfigError as exc:
            self.notify(str(exc), severity="error", timeout=5)
            return
        self.controller.set_persona(name)
        self.profiles.apply(profile)
        self.notify(f"persona: {name or 'none (the profile’s own system prompt)'}", timeout=3)

    def resume_persona(self, name: str | None) -> None:
        """A resumed chat goes on with the persona it used, if llama-tui.toml still has it."""
        if name == self.state.persona:
            return
        if name is not None and name not in self.state.config.prompts:
            self.controller.persona = self.state.persona
            self.conversation.add_notice(
                f"this chat used persona '{name}', which the config no longer has"
                f" ([prompts.{name}]): new turns use "
                + (f"persona '{self.state.persona}'" if self.state.persona else "no persona"),
                "error",
            )
            return
        self.use_persona(name)

    def action_continue_reply(self) -> None:
        """Extend the last reply where it stopped (length, or Esc) from the engine's cache."""
        last = self.conversation.last_reply()
        if self.busy or last is None:
            self.notify(f"continue: {WAIT if last else 'there is no reply yet'}", timeout=3)
            return
        turn = self.controller.continue_reply()
        self.conversation.continue_turn(turn.id, last)

    async def action_new_conversation(self) -> None:
        await self.saved.start_new()

    def action_conversations(self) -> None:
        self.saved.open_list()

    def action_edit_message(self) -> None:
        users = self.conversation.held(self.controller.length, users_only=True)
        if self.busy or not users:
            why = WAIT if self.busy else "there is no answered message to edit yet"
            self.notify(f"edit: {why}", timeout=3)
            return
        screen = EditMessageScreen(users, cursor_blink=self.cursor_blink)
        self.app.push_screen(screen, self._on_edited)

    async def _on_edited(self, edit: tuple[int, str] | None) -> None:
        if edit is None:
            return
        if self.busy:
            self.notify(f"edit: {WAIT}", timeout=3)
            return
        index, text = edit
        user = self.conversation.user_at(index)
        if user is None:
            self.notify(f"edit: message {index + 1} is no longer on screen", timeout=3)
            return
        await self.conversation.remove_from(user)
        self.send(text, edit=index)

    def action_pin_message(self) -> None:
        shown = self.conversation.held(self.controller.length)
        if not shown:
            self.notify("pin: there is no answered message to pin yet", timeout=3)
            return
        screen = PinMessageScreen(
            shown, set(self.controller.pinned), cursor_blink=self.cursor_blink
        )
        self.app.push_screen(screen, self._on_pin_choice)

    def _on_pin_choice(self, index: int | None) -> None:
        if index is not None:  # a pinned message is unpinned, any other pinned
            self.controller.pin(index, index not in self.controller.pinned)

    def action_reply_details(self) -> None:
        """The last reply's details; Left and Right step to the other replies on screen."""
        earlier = [reply.record for reply in self.conversation.replies_shown()[:-1]]
        self.app.push_screen(ReplyDetailsScreen(self.stats, earlier))

    def action_copy_reply(self) -> None:
        last = self.conversation.last_reply()
        if last is None or not last.text:
            self.notify("no reply to copy yet", timeout=2)
            return
        self.app.copy_to_clipboard(last.text)  # OSC 52: reaches the local clipboard over SSH
        self.notify(f"copied {len(last.text)} characters (OSC 52)", timeout=2)

    def action_copy_code(self) -> None:
        """Copy the last reply's next code block (the first again after the last) with OSC 52."""
        last = self.conversation.last_reply()
        blocks = code_blocks(last.text) if last is not None else []
        if last is None or not blocks:
            self.notify("no code block in the last reply", timeout=2)
            return
        text, index = self._code
        index = (index + 1) % len(blocks) if text == last.text else 0
        self._code = (last.text, index)
        block = blocks[index]
        self.app.copy_to_clipboard(block.code)  # OSC 52: reaches the local clipboard over SSH
        self.notify(f"copied code block {index + 1}/{len(blocks)} ({block.describe()})", timeout=3)

    def action_toggle_pane(self, name: str) -> None:
        pane = self.query_one(f"#{name}")
        pane.display = not pane.display
        if self.narrow and pane.display:  # one bottom panel at a time
            other = self.query_one("#metrics" if name == "config" else "#config")
            other.display = False
        self._sync_sidebar()

    def action_pick_profile(self) -> None:
        self.query_one("#config").display = True
        if self.narrow:
            self.query_one("#metrics").display = False
        self._sync_sidebar()
        self.query_one("#profile-picker").focus()

    def action_focus_prompt(self) -> None:
        self.query_one(PromptInput).focus()

    def update_subtitle(self) -> None:
        profile, info, tok_s = self.controller.profile, self.profiles.info, self.stats.decode_tok_s
        self.conversation.show_subtitle(
            profile.name if profile else "",
            info.name if info else "",
            f"{tok_s:.1f} tok/s" if tok_s > 0 else "",
        )

    # Engine events --------------------------------------------------------------------------

    async def on_engine_update(self, update: EngineUpdate) -> None:
        if update.ticket_id in self.profiles.loads:
            self.profiles.on_load_events(update)
        else:
            await self.view.take(update)
