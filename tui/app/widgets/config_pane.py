"""The Config pane: profile picker, effective values, sampling values editable in place."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.widgets import Input, Label, Select, Static

from engine import REMOTE_UNSENT, ModelInfo, Profile, profile_to_dict
from tui.app.messages import ProfilePicked, SettingEdited
from tui.app.profiles import EDITABLE

SAMPLING_CAPTION = "sampling · enter applies"


def _shown(value: object) -> str:
    return "random" if value is None else str(value)  # only seed may be None


def effective_rows(
    profile: Profile, info: ModelInfo | None, persona: str | None = None
) -> list[tuple[str, str]]:
    """What runs: the model actually loaded (when known) and the profile's other settings;
    `persona`: the [prompts.NAME] over them, when one is in use."""
    rows = _rows(profile, info)
    return rows + [("persona", f"{persona} ([prompts.{persona}])")] if persona else rows


def _rows(profile: Profile, info: ModelInfo | None) -> list[tuple[str, str]]:
    model = Path(profile.model).name if profile.model else "embedded SmolLM2-135M"
    system = profile.system_prompt or "(none)"
    if len(system) > 60:
        system = system[:57] + "…"
    if profile.backend == "openai":  # the server decides device, dtype and the rest
        model = info.name if info else profile.remote_model or "(the server's first)"
        context = info.context_length if info else profile.context_length
        return [
            ("model", model),
            ("server", profile.base_url),
            ("key", f"${profile.api_key_env}" if profile.api_key_env else "(none)"),
            ("context", f"{context:,} tokens"),
            ("template", "chat" if profile.chat_template else "raw completion"),
            ("theme", profile.theme),
            ("system", system),
        ]
    return [
        ("model", model),
        ("device", info.device if info else profile.device),
        ("dtype", info.dtype if info else profile.dtype),
        ("quantization", info.quantization if info else profile.quantization),
        ("offload", info.offload if info else ("asked" if profile.offload else "off")),
        ("context", f"{info.context_length if info else profile.context_length:,} tokens"),
        ("template", "chat" if profile.chat_template else "raw completion"),
        ("theme", profile.theme),
        ("system", system),
    ]


class ConfigPane(VerticalScroll):
    BORDER_TITLE = "Config"

    def __init__(self, names: list[str], active: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._names = names
        self._active = active
        self._quiet = False  # True while the picker is set from code, not by the user
        self._server_models: list[str] = []  # a remote profile's: what its server offers
        self._server_model = ""  # the one it runs

    def compose(self) -> ComposeResult:
        yield Select(
            [(n, n) for n in self._names],
            value=self._active,
            allow_blank=False,
            compact=True,
            id="profile-picker",
        )
        # a remote profile: the models its server offers (picking one edits remote_model)
        server_models = Select[str]([], prompt="server model", compact=True, id="server-model")
        server_models.display = False
        yield server_models
        yield Static(id="effective")
        yield Label(SAMPLING_CAPTION, classes="caption", id="sampling-caption")
        for key in EDITABLE:
            with Horizontal(classes="setting"):
                yield Label(key, classes="key", id=f"key-{key}")
                yield Input(id=f"set-{key}", compact=True, select_on_focus=True)
        yield Static(id="config-error")

    def show(
        self, profile: Profile, info: ModelInfo | None, source: str, persona: str | None = None
    ) -> None:
        self.border_subtitle = source
        rows = effective_rows(profile, info, persona)
        width = max(len(k) for k, _ in rows)
        self.query_one("#effective", Static).update(
            Content("\n").join(Content.assemble((f"{k:<{width}} ", "dim"), v) for k, v in rows)
        )
        flat = profile_to_dict(profile)
        remote = profile.backend == "openai"
        caption = SAMPLING_CAPTION + (" · * the server ignores it" if remote else "")
        self.query_one("#sampling-caption", Label).update(caption)
        for key in EDITABLE:
            ignored = remote and key in REMOTE_UNSENT
            self.query_one(f"#key-{key}", Label).update(key + ("*" if ignored else ""))
            field = self.query_one(f"#set-{key}", Input)
            if not field.has_focus or not field.has_class("-invalid"):
                field.value = _shown(flat[key])
            field.remove_class("-invalid")
        self.set_error(None)
        self.set_active(profile.name)
        self._show_server_models(info if remote else None)

    def _show_server_models(self, info: ModelInfo | None) -> None:
        picker = self.query_one("#server-model", Select)
        models = list(info.models) if info is not None else []
        picker.display = bool(models)
        if not models or info is None:
            return
        with self.prevent(Select.Changed):
            if models != self._server_models:
                self._server_models = models
                picker.set_options([(m, m) for m in models])
            if info.name in models:
                self._server_model = picker.value = info.name

    def set_profiles(self, names: list[str], active: str) -> None:
        if names != self._names:
            self._names = names
            with self.prevent(Select.Changed):
                self.query_one(Select).set_options([(n, n) for n in names])
        self.set_active(active)

    def set_active(self, name: str) -> None:
        self._active = name
        picker = self.query_one(Select)
        if picker.value != name and name in self._names:
            with self.prevent(Select.Changed):
                picker.value = name

    def set_error(self, message: str | None, key: str | None = None) -> None:
        error = self.query_one("#config-error", Static)
        error.update(Content(message or ""))
        error.display = bool(message)
        if key is not None:
            self.query_one(f"#set-{key}", Input).add_class("-invalid")

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.select.id == "server-model":
            if isinstance(event.value, str) and event.value != self._server_model:
                self.post_message(SettingEdited("remote_model", event.value))
            return
        if isinstance(event.value, str) and event.value != self._active:
            self.post_message(ProfilePicked(event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        key = (event.input.id or "").removeprefix("set-")
        self.post_message(SettingEdited(key, event.value))
