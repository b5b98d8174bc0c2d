"""The chat screen: the three panes and the prompt, wired to the engine through the bridge."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from engine.backend import GenerationRequest, ModelInfo
from engine.config import Profile, sampling_changed_only
from engine.errors import ConfigError
from engine.events import Done, Failed, LoadProgress, PrefillDone, TokenEvent
from engine.queue import ClearRequest, LoadRequest, MemoryStats, ModelReady, Started
from tui.bridge import EngineBridge
from tui.messages import EngineUpdate, ProfilePicked, PromptSubmitted, SettingEdited
from tui.profiles import ProfileState
from tui.stats import LiveStats
from tui.widgets.config_pane import ConfigPane
from tui.widgets.conversation import ConversationPane
from tui.widgets.message import AssistantMessage
from tui.widgets.metrics_pane import MetricsPane
from tui.widgets.prompt import PromptInput

NARROW = 110  # below this many columns the side panes start hidden (F2/F3 show them)
WATCH_S = 1.0  # how often the config file's mtime is checked


class ChatScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "cancel", "Stop"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+n", "new_conversation", "New chat"),
        Binding("f2", "toggle_pane('config')", "Config"),
        Binding("f3", "toggle_pane('metrics')", "Metrics"),
        Binding("f4", "pick_profile", "Profile"),
        Binding("ctrl+y", "copy_reply", "Copy reply", show=False),
        Binding("f6", "focus_prompt", "Prompt", show=False),
    ]

    def __init__(self, state: ProfileState, bridge: EngineBridge, *, cursor_blink: bool) -> None:
        super().__init__()
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

    def send(self, text: str, kind: str = "") -> None:
        profile = self.profile
        assert profile is not None
        ahead = len(self.replies) + len(self.loads)
        self.conversation.follow = True
        if kind != "regenerate":
            self.conversation.add_user(text)
            kind = "chat" if profile.chat_template else "complete"
        reply = self.conversation.add_assistant("pending" if ahead else "…")
        if ahead:
            reply.set_status(f"pending · {ahead} ahead", "pending")
        request = GenerationRequest(kind, text, profile.sampling, profile.max_new_tokens)  # type: ignore[arg-type]
        ticket = self.bridge.submit(request, self)
        self.replies[ticket.id] = reply

    def action_cancel(self) -> None:
        if not self.bridge.queue.cancel_running():
            self.notify("nothing is running", timeout=2)

    def action_regenerate(self) -> None:
        last = self.conversation.last_reply()
        if self.busy or last is None:
            self.notify(
                "regenerate: wait for the reply to finish (Esc stops it)"
                if last
                else "regenerate: there is no reply yet",
                timeout=3,
            )
            return
        last.remove()
        self.send("", "regenerate")

    async def action_new_conversation(self) -> None:
        self.bridge.queue.cancel_all()
        self.bridge.submit(ClearRequest(), self)
        self.replies.clear()
        self.stats.on_stopped()
        await self.conversation.clear_messages()
        self.conversation.add_notice("new conversation")

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
            elif isinstance(event, Done):
                await reply.finish(event.stop_reason)
                self.stats.on_done(event.metrics)
            elif isinstance(event, Failed):
                await reply.fail(event.message)
                self.stats.on_stopped()
            elif isinstance(event, MemoryStats):
                self.stats.on_memory(event)
        if chunk:
            await reply.append("".join(chunk))
        self.conversation.keep_up()
        if update.finished:
            del self.replies[update.ticket_id]
            self._renumber_pending()

    def _renumber_pending(self) -> None:
        for ahead, reply in enumerate(list(self.replies.values())[1:], 1):
            reply.set_status(f"pending · {ahead} ahead", "pending")
