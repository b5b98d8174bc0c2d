"""The chat screen: the three panes and the prompt, wired to the engine through the bridge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from engine import (
    ClearRequest,
    ConfigError,
    ConversationStore,
    Done,
    Failed,
    GenerationRequest,
    LoadProgress,
    LoadRequest,
    MemoryStats,
    Message,
    ModelInfo,
    ModelReady,
    PrefillDone,
    Profile,
    Recorder,
    ReplySaver,
    Started,
    TokenEvent,
    UserError,
    data_dir,
    open_store,
    sampling_changed_only,
)
from tui.app.bridge import EngineBridge
from tui.app.messages import EngineUpdate, ProfilePicked, PromptSubmitted, SettingEdited
from tui.app.profiles import ProfileState
from tui.app.screens.conversations import ConversationsScreen, ListChoice
from tui.app.screens.edit_message import EditMessageScreen
from tui.app.stats import LiveStats
from tui.app.widgets.config_pane import ConfigPane
from tui.app.widgets.conversation import ConversationPane
from tui.app.widgets.message import AssistantMessage, UserMessage
from tui.app.widgets.metrics_pane import MetricsPane
from tui.app.widgets.prompt import PromptInput

NARROW = 110  # below this many columns the side panes start hidden (F2/F3 show them)
WATCH_S = 1.0  # how often the config file's mtime is checked


@dataclass
class Turn:
    """A request that adds to the conversation, and how far it has been saved."""

    kind: str  # chat | regenerate | edit | complete
    text: str  # what the user sent (edit: the new text)
    user: UserMessage | None  # its block on screen
    index: int = -1  # edit: the session index of the message it replaces
    at: int | None = None  # session index of its user message, once it runs
    begun: bool = False  # it ran: the session (and the store) took its user message
    saver: ReplySaver | None = None
    fed: int = 0  # characters of the reply handed to the saver


class ChatScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "cancel", "Stop"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+n", "new_conversation", "New chat"),
        Binding("f2", "toggle_pane('config')", "Config"),
        Binding("f3", "toggle_pane('metrics')", "Metrics"),
        Binding("f4", "pick_profile", "Profile"),
        Binding("ctrl+o", "conversations", "Conversations"),
        Binding("f5", "edit_message", "Edit msg"),
        Binding("ctrl+y", "copy_reply", "Copy reply", show=False),
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
        self.data_dir = data_dir  # --data-dir (None: $LLAMA_TUI_DATA_DIR, else the user's)
        self.save = save  # False: --no-save
        self.recorder = Recorder(None, {})
        self.turns: dict[int, Turn] = {}  # ticket id -> a turn of the conversation
        self.session_len = 0  # messages in the engine's session, as far as the screen knows
        self._browse_store: ConversationStore | None = None  # the list's, under --no-save
        self.state = state
        self.bridge = bridge
        self.stats = LiveStats()
        self.profile: Profile | None = None  # what new requests use (sampling read per request)
        self.loaded: Profile | None = None  # the profile the engine last loaded successfully
        self.info: ModelInfo | None = None
        self.replies: dict[int, AssistantMessage] = {}  # ticket id -> reply being answered
        self.loads: dict[int, Profile] = {}  # ticket id -> profile being loaded
        self.narrow: bool | None = None
        self._cursor_blink = cursor_blink

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="chat"):
                yield ConversationPane(id="conversation")
                yield PromptInput(id="prompt", cursor_blink=self._cursor_blink)
            with Vertical(id="sidebar"):
                yield ConfigPane(self.state.names, self.state.name, id="config")
                yield MetricsPane(self.stats, id="metrics")
        yield Footer()

    @property
    def conversation(self) -> ConversationPane:
        return self.query_one(ConversationPane)

    @property
    def config_pane(self) -> ConfigPane:
        return self.query_one(ConfigPane)

    def on_mount(self) -> None:
        if self.save:
            try:
                self.recorder.store = open_store(self.data_dir)
            except UserError as exc:
                self.conversation.add_notice(f"this chat is not saved: {exc}", "error")
        self.apply_profile(self.state.profile())
        self.query_one(PromptInput).focus()
        self.set_interval(WATCH_S, self.watch_config_file)
        self.set_interval(1.0, self.update_subtitle)

    def on_resize(self) -> None:
        narrow = self.size.width < NARROW
        if narrow != self.narrow:
            self.narrow = narrow
            self.query_one("#config").display = not narrow
            self.query_one("#metrics").display = not narrow
            self._sync_sidebar()

    def _sync_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        sidebar.display = any(child.display for child in sidebar.children)

    # Profiles -------------------------------------------------------------------------------

    def apply_profile(self, new: Profile) -> None:
        """Sampling-only changes apply to the next request; others go through the engine."""
        old, self.profile = self.profile, new
        self.recorder.profile = asdict(new)
        if old is None or old.theme != new.theme:
            self.set_theme(new.theme)
        self.config_pane.show(new, self.info, self._source())
        if old is not None and sampling_changed_only(old, new) and not self.loads:
            self.notify(f"{new.name}: sampling applies to the next reply", timeout=2)
            return
        ticket = self.bridge.submit(LoadRequest(new), self)
        self.loads[ticket.id] = new

    def set_theme(self, name: str) -> None:
        if name in self.app.available_themes:
            self.app.theme = name
        else:
            names = ", ".join(n for n in self.app.available_themes if n.startswith("llama"))
            self.conversation.add_notice(f"unknown theme '{name}'; themes: {names}", "error")

    def _source(self) -> str:
        path = self.state.config.path
        return Path(path).name if path else "(built-in defaults)"

    def on_profile_picked(self, event: ProfilePicked) -> None:
        self.switch_profile(event.name)

    def switch_profile(self, name: str) -> None:
        try:
            profile = self.state.switch(name)
        except ConfigError as exc:
            self.config_pane.set_error(str(exc))
            return
        self.apply_profile(profile)

    def on_setting_edited(self, event: SettingEdited) -> None:
        try:
            profile = self.state.edit(event.key, event.text)
        except ConfigError as exc:
            flag = "--" + event.key.replace("_", "-") + " "
            self.config_pane.set_error(str(exc).replace(flag, f"{event.key} = ", 1), event.key)
            return
        self.apply_profile(profile)

    def watch_config_file(self) -> None:
        if not self.state.changed_on_disk():
            return
        try:
            profile = self.state.reload()
        except ConfigError as exc:
            self.config_pane.set_error(f"config not reloaded: {exc}")
            return
        self.config_pane.set_profiles(self.state.names, self.state.name)
        self.notify(f"{self._source()} reloaded", timeout=2)
        if profile != self.profile:
            self.apply_profile(profile)

    # Requests -------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.replies or self.loads)

    def on_prompt_submitted(self, event: PromptSubmitted) -> None:
        self.send(event.text)

    def send(self, text: str, kind: str = "", index: int = -1) -> None:
        profile = self.profile
        assert profile is not None
        ahead = len(self.replies) + len(self.loads)
        self.conversation.follow = True
        if kind == "regenerate":
            users = self.conversation.query(UserMessage)
            user = users.last() if users else None
            if user is not None and user.index is not None:
                index = user.index  # the session answers its last user message again
        else:
            user = self.conversation.add_user(text)
            if kind != "edit":
                kind = "chat" if profile.chat_template else "complete"
        reply = self.conversation.add_assistant("pending" if ahead else "…")
        if ahead:
            reply.set_status(f"pending · {ahead} ahead", "pending")
        request = GenerationRequest(
            kind,  # type: ignore[arg-type]
            text,
            profile.sampling,
            profile.max_new_tokens,
            index=index,
        )
        ticket = self.bridge.submit(request, self)
        self.replies[ticket.id] = reply
        self.turns[ticket.id] = Turn(kind, text, user, index)

    def action_cancel(self) -> None:
        if not self.bridge.queue.cancel_running():
            self.notify("nothing is running", timeout=2)

    def action_regenerate(self) -> None:
        last = self.conversation.last_reply()
        users = self.conversation.query(UserMessage)
        if self.busy or last is None:
            self.notify(
                "regenerate: wait for the reply to finish (Esc stops it)"
                if last
                else "regenerate: there is no reply yet",
                timeout=3,
            )
            return
        blocks = list(self.conversation.children)
        if not users or blocks.index(last) > blocks.index(users.last()):
            last.remove()  # (a resumed chat may end with a message that was never answered)
        self.send("", "regenerate")

    async def action_new_conversation(self) -> None:
        await self._restart([])
        self.conversation.add_notice("new conversation")

    async def _restart(self, messages: list[Message]) -> None:
        """Stop everything and start over: empty, or with a saved conversation's messages."""
        self.bridge.queue.cancel_all()
        for ticket_id, turn in self.turns.items():  # a reply cut short here is kept, stopped
            reply = self.replies.get(ticket_id)
            saver = turn.saver
            if saver is not None and reply is not None:
                text = reply.text
                self._save(lambda: saver.stop(text))  # noqa: B023 (runs right away)
        self.bridge.submit(ClearRequest(tuple(messages)), self)
        self.replies.clear()
        self.turns.clear()
        self.session_len = len(messages)
        self.recorder.conv = None
        self.stats.on_stopped()
        self.stats.on_dropped(0, 0)
        await self.conversation.clear_messages()

    # Saved conversations --------------------------------------------------------------------

    def _list_store(self) -> ConversationStore | None:
        if self.recorder.store is not None:
            return self.recorder.store
        if self._browse_store is None:
            try:  # --no-save: the list still opens, this chat is just not written
                self._browse_store = open_store(self.data_dir)
            except UserError as exc:
                self.notify(str(exc), severity="error", timeout=6)
        return self._browse_store

    def action_conversations(self) -> None:
        store = self._list_store()
        if store is None:
            return
        screen = ConversationsScreen(
            store, self.recorder.conv, data_dir(self.data_dir), cursor_blink=self._cursor_blink
        )
        self.app.push_screen(screen, self._on_list_choice)

    async def _on_list_choice(self, choice: ListChoice | None) -> None:
        store, conv = self.recorder.store, self.recorder.conv
        if store is not None and conv is not None and not store.exists(conv):
            await self.action_new_conversation()  # the chat on screen was deleted from the list
            self.notify(f"conversation #{conv} was deleted: this is a new one", timeout=4)
        if choice is None:
            return
        if choice.action == "new":
            await self.action_new_conversation()
        elif choice.conv is not None:
            await self.resume(choice.conv)

    async def resume(self, conv: int) -> None:
        """Go on with a saved conversation: its messages on screen and in the session (the
        first turn rebuilds their K/V, reusing whatever prefix the cache still holds)."""
        store = self._list_store()
        if store is None:
            return
        try:
            title = store.get(conv)["title"]
            rows = store.messages(conv)
        except UserError as exc:
            self.notify(str(exc), severity="error", timeout=6)
            return
        await self._restart([Message(r["role"], r["content"]) for r in rows])
        if self.recorder.store is store:
            self.recorder.conv = conv
        await self.conversation.add_history(
            [(r["role"], r["content"], bool(r["stopped"])) for r in rows]
        )
        saved = "" if self.recorder.store is store else " (--no-save: new turns are not saved)"
        self.conversation.add_notice(f"resumed #{conv} '{title}', {len(rows)} messages{saved}")
        self.query_one(PromptInput).focus()

    def action_edit_message(self) -> None:
        if self.busy:
            self.notify("edit: wait for the reply to finish (Esc stops it)", timeout=3)
            return
        users = [
            (w.index, w.text)
            for w in self.conversation.query(UserMessage)
            if w.index is not None and w.index < self.session_len
        ]
        if not users:
            self.notify("edit: there is no answered message to edit yet", timeout=3)
            return
        screen = EditMessageScreen(users, cursor_blink=self._cursor_blink)
        self.app.push_screen(screen, self._on_edited)

    async def _on_edited(self, edit: tuple[int, str] | None) -> None:
        if edit is None:
            return
        if self.busy:
            self.notify("edit: wait for the reply to finish (Esc stops it)", timeout=3)
            return
        index, text = edit
        user = next((w for w in self.conversation.query(UserMessage) if w.index == index), None)
        if user is None:
            self.notify(f"edit: message {index + 1} is no longer on screen", timeout=3)
            return
        await self.conversation.remove_from(user)
        self.send(text, "edit", index)

    def action_copy_reply(self) -> None:
        last = self.conversation.last_reply()
        if last is None or not last.text:
            self.notify("no reply to copy yet", timeout=2)
            return
        self.app.copy_to_clipboard(last.text)  # OSC 52: reaches the local clipboard over SSH
        self.notify(f"copied {len(last.text)} characters (OSC 52)", timeout=2)

    def action_toggle_pane(self, name: str) -> None:
        pane = self.query_one(f"#{name}")
        pane.display = not pane.display
        self._sync_sidebar()

    def action_pick_profile(self) -> None:
        self.query_one("#config").display = True
        self._sync_sidebar()
        self.query_one("#profile-picker").focus()

    def action_focus_prompt(self) -> None:
        self.query_one(PromptInput).focus()

    def update_subtitle(self) -> None:
        parts = [self.profile.name if self.profile else ""]
        if self.info is not None:
            parts.append(self.info.name)
        if self.stats.decode_tok_s > 0:
            parts.append(f"{self.stats.decode_tok_s:.1f} tok/s")
        subtitle = " · ".join(p for p in parts if p)
        if subtitle != self.conversation.border_subtitle:  # a border repaint is not free
            self.conversation.border_subtitle = subtitle

    # Engine events --------------------------------------------------------------------------

    async def on_engine_update(self, update: EngineUpdate) -> None:
        if update.ticket_id in self.loads:
            self._on_load_events(update)
        elif update.ticket_id in self.replies:
            await self._on_reply_events(update)
        else:  # e.g. a ClearRequest, or a reply removed by "new conversation"
            for event in update.events:
                if isinstance(event, MemoryStats):
                    self.stats.on_memory(event)

    def _on_load_events(self, update: EngineUpdate) -> None:
        profile = self.loads[update.ticket_id]
        for event in update.events:
            if isinstance(event, LoadProgress):
                label = f"loading weights for profile {profile.name}…"
                self.conversation.show_load(label).progress(event.done, event.total)
            elif isinstance(event, ModelReady):
                self.conversation.hide_load()
                self.loaded, self.info = profile, event.info
                self.stats.on_model(event.info)
                how = (
                    "reused (already loaded)"
                    if event.info.reused
                    else (f"loaded in {event.info.load_s:.1f} s")
                )
                self.conversation.add_notice(
                    f"profile {profile.name}: {event.info.name} on {event.info.device}, {how}"
                )
                if self.profile is not None:
                    self.config_pane.show(self.profile, self.info, self._source())
            elif isinstance(event, Failed):
                self.conversation.hide_load()
                keep = self.loaded.name if self.loaded else "nothing loaded"
                self.conversation.add_notice(
                    f"profile {profile.name} not loaded: {event.message} (still: {keep})", "error"
                )
                if self.loaded is not None and self.profile == profile:
                    self.state.name, self.state.edits = self.loaded.name, {}
                    self.profile = self.loaded
                    self.config_pane.show(self.loaded, self.info, self._source())
            elif isinstance(event, MemoryStats):
                self.stats.on_memory(event)
        if update.finished:
            del self.loads[update.ticket_id]

    async def _on_reply_events(self, update: EngineUpdate) -> None:
        reply = self.replies[update.ticket_id]
        turn = self.turns.get(update.ticket_id)
        chunk: list[str] = []
        for event in update.events:
            if isinstance(event, TokenEvent):
                chunk.append(event.text)
                if event.token_id >= 0:
                    self.stats.on_token(event.elapsed_s)
                continue
            if chunk:
                await reply.append("".join(chunk))
                chunk.clear()
            if isinstance(event, Started):
                reply.set_status("prefill…")
                self.stats.start()
            elif isinstance(event, PrefillDone):
                reply.set_status("streaming")
                if turn is not None:
                    self._begin(turn)
            elif isinstance(event, Done):
                await reply.finish(event.stop_reason)
                self.stats.on_done(event.metrics)
                if turn is not None:
                    self._finish(turn, reply, event)
            elif isinstance(event, Failed):
                await reply.fail(event.message)
                self.stats.on_stopped()
                if turn is not None:
                    self._fail(turn)
            elif isinstance(event, MemoryStats):
                self.stats.on_memory(event)
        if chunk:
            await reply.append("".join(chunk))
        if turn is not None and turn.saver is not None and turn.fed < len(reply.text):
            self._save(lambda: turn.saver.token(reply.text[turn.fed :]))  # type: ignore[union-attr]
            turn.fed = len(reply.text)
        self.conversation.keep_up()
        if update.finished:
            del self.replies[update.ticket_id]
            self.turns.pop(update.ticket_id, None)
            self._renumber_pending()

    def _begin(self, turn: Turn) -> None:
        """The engine took the turn: save its user message where the session put it."""
        if turn.begun:
            return
        turn.begun = True
        rec = self.recorder
        if turn.kind == "chat":
            turn.at = self.session_len
            self._save(lambda: setattr(turn, "saver", rec.user(turn.text, turn.at)))
        elif turn.kind == "regenerate":
            at = turn.at = turn.index if turn.index >= 0 else max(self.session_len - 2, 0)
            self._save(lambda: setattr(turn, "saver", rec.reply(at + 1)))
        elif turn.kind == "edit":
            turn.at, parent = turn.index, rec.conv
            self._save(lambda: setattr(turn, "saver", rec.fork(turn.index, turn.text)))
            if parent is not None and rec.conv != parent:
                self.notify(f"forked: conversation #{rec.conv} (#{parent} stays as it was)")
        else:  # a raw completion: saved, but not part of the session's history
            self._save(lambda: setattr(turn, "saver", rec.user(turn.text, None)))

    def _finish(self, turn: Turn, reply: AssistantMessage, done: Done) -> None:
        if done.context_start is None and turn.kind != "complete":
            return  # cancelled before it ran: the session did not change
        if done.notice:  # older turns trimmed, or an over-long message cut to fit
            self.notify(done.notice, severity="warning", timeout=8)
        self._begin(turn)
        if turn.saver is not None:
            self._save(lambda: turn.saver.done(done))  # type: ignore[union-attr]
            turn.fed = len(reply.text)
        if done.context_start is None or turn.at is None:
            return
        if turn.user is not None:
            turn.user.index = turn.at
        reply.index = turn.at + 1
        self.session_len = turn.at + 2
        dropped = self.conversation.mark_context(done.context_start, set(done.pinned))
        self.stats.on_dropped(*dropped)

    def _fail(self, turn: Turn) -> None:
        """The store is put back in step with the session, and the text comes back."""
        if turn.kind in ("edit", "regenerate") and turn.index >= 0:  # the session kept
            self.session_len = min(self.session_len, turn.index)  # messages[:index]
        if turn.begun:
            self._save(lambda: self.recorder.truncate(self.session_len))
        prompt = self.query_one(PromptInput)
        if turn.kind != "regenerate" and not prompt.text:
            prompt.text = turn.text  # nothing typed is lost: edit it and send again

    def _save(self, write: Callable[[], object]) -> None:
        """Run a store write; a failure stops saving this chat, with one line saying why."""
        if self.recorder.store is None:
            return
        try:
            write()
        except UserError as exc:
            self.recorder.store = None
            self.conversation.add_notice(f"saving stopped: {exc}", "error")

    def _renumber_pending(self) -> None:
        for ahead, reply in enumerate(list(self.replies.values())[1:], 1):
            reply.set_status(f"pending · {ahead} ahead", "pending")
