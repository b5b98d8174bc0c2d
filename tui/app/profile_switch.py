"""Profile switching in the app: the picker, in-place edits, the watched config file, and the
background loads they start (a progress bar, a notice, the old profile back when a load fails).

Sampling-only changes apply to the next request without the engine; others submit a
LoadRequest, ordered with the conversation's requests. The chat screen routes load tickets here.
"""

from __future__ import annotations

from pathlib import Path

from textual.screen import Screen

from engine import (
    ConfigError,
    Conversation,
    Failed,
    LoadProgress,
    MemoryStats,
    ModelInfo,
    ModelReady,
    Profile,
    sampling_changed_only,
)
from tui.app.messages import EngineUpdate, SettingEdited
from tui.app.profiles import ProfileState
from tui.app.stats import LiveStats
from tui.app.widgets.config_pane import ConfigPane
from tui.app.widgets.conversation import ConversationPane


class ProfileSwitcher:
    def __init__(
        self, screen: Screen[None], controller: Conversation, state: ProfileState, stats: LiveStats
    ) -> None:
        self.screen, self.controller, self.state, self.stats = screen, controller, state, stats
        self.loaded: Profile | None = None  # the profile the engine last loaded successfully
        self.info: ModelInfo | None = None
        self.loads: dict[int, Profile] = {}  # ticket id -> profile being loaded

    def apply(self, new: Profile) -> None:
        """Make `new` the profile of the next requests, loading it when more than sampling
        changed."""
        old, self.controller.profile = self.controller.profile, new
        if old is None or old.theme != new.theme:
            self.set_theme(new.theme)
        self.show(new)
        if old is not None and sampling_changed_only(old, new) and not self.loads:
            self.screen.notify(f"{new.name}: sampling applies to the next reply", timeout=2)
            return
        self.loads[self.controller.load(new).id] = new

    @property
    def config_pane(self) -> ConfigPane:
        return self.screen.query_one(ConfigPane)

    def set_theme(self, name: str) -> None:
        app = self.screen.app
        if name in app.available_themes:
            app.theme = name
        else:
            names = ", ".join(n for n in app.available_themes if n.startswith("llama"))
            pane = self.screen.query_one(ConversationPane)
            pane.add_notice(f"unknown theme '{name}'; themes: {names}", "error")

    def show(self, profile: Profile) -> None:
        """The config pane shows `profile` as it runs, with the persona over it."""
        self.config_pane.show(profile, self.info, self.source(), self.state.persona)

    def source(self) -> str:
        """The config pane's subtitle: the file, and the persona in use."""
        path = self.state.config.path
        name = Path(path).name if path else "(built-in defaults)"
        return f"{name} · persona {self.state.persona}" if self.state.persona else name

    def switch(self, name: str) -> None:
        try:
            profile = self.state.switch(name)
        except ConfigError as exc:
            self.config_pane.set_error(str(exc))
            return
        self.apply(profile)

    def edit(self, event: SettingEdited) -> None:
        try:
            profile = self.state.edit(event.key, event.text)
        except ConfigError as exc:
            flag = "--" + event.key.replace("_", "-") + " "
            error = str(exc).replace(flag, f"{event.key} = ", 1)
            self.config_pane.set_error(error, event.key)
            return
        self.apply(profile)

    def watch_file(self) -> None:
        if not self.state.changed_on_disk():
            return
        pane = self.config_pane
        try:
            profile = self.state.reload()
        except ConfigError as exc:
            pane.set_error(f"config not reloaded: {exc}")
            return
        pane.set_profiles(self.state.names, self.state.name)
        self.screen.notify(f"{self.source()} reloaded", timeout=2)
        if profile != self.controller.profile:
            self.apply(profile)

    def on_load_events(self, update: EngineUpdate) -> None:
        pane, controller = self.screen.query_one(ConversationPane), self.controller
        profile = self.loads[update.ticket_id]
        for event in update.events:
            if isinstance(event, LoadProgress):
                label = f"loading weights for profile {profile.name}…"
                pane.show_load(label).progress(event.done, event.total)
            elif isinstance(event, ModelReady):
                pane.hide_load()
                info = self.info = event.info
                self.loaded = profile
                self.stats.on_model(info)
                how = "reused (already loaded)" if info.reused else f"loaded in {info.load_s:.1f} s"
                pane.add_notice(f"profile {profile.name}: {info.name} on {info.device}, {how}")
                if controller.profile is not None:
                    self.show(controller.profile)
            elif isinstance(event, Failed):
                pane.hide_load()
                keep = self.loaded.name if self.loaded else "nothing loaded"
                pane.add_notice(
                    f"profile {profile.name} not loaded: {event.message} (still: {keep})", "error"
                )
                if self.loaded is not None and controller.profile == profile:
                    self.state.name, self.state.edits = self.loaded.name, {}
                    controller.profile = self.loaded
                    self.show(self.loaded)
            elif isinstance(event, MemoryStats):
                self.stats.on_memory(event)
        if update.finished:
            del self.loads[update.ticket_id]
