"""The active profile as the UI sees it: config file, CLI overrides, in-place edits, file watch.

No Textual here: the screen asks this object for profiles and shows its ConfigErrors in place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import (
    DEFAULTS_NAME,
    Config,
    ConfigError,
    Profile,
    apply_persona,
    load_config,
    resolve_profile,
)

EDITABLE = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "seed",
    "max_new_tokens",
)  # keys the config pane edits in place


def _stamp(path: Path | None) -> tuple[float, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


@dataclass
class ProfileState:
    config: Config
    name: str  # active profile name
    overrides: Mapping[str, Any] = field(default_factory=dict)  # CLI flags: on every profile
    edits: dict[str, Any] = field(default_factory=dict)  # in-place edits: this profile only
    stamp: tuple[float, int] | None = None  # config file (mtime, size) when last read
    persona: str | None = None  # a [prompts.NAME] over whichever profile is active

    @classmethod
    def open(
        cls, config_path: Path | None, name: str | None, overrides: Mapping[str, Any]
    ) -> ProfileState:
        config = load_config(config_path)
        profile = resolve_profile(config, name, overrides)  # checks the name and the flags
        return cls(config, profile.name, dict(overrides), {}, _stamp(config.path))

    @property
    def names(self) -> list[str]:
        return [DEFAULTS_NAME, *self.config.profiles]

    def profile(self) -> Profile:
        return self._dressed(
            resolve_profile(self.config, self.name, {**self.overrides, **self.edits})
        )

    def _dressed(self, profile: Profile) -> Profile:
        """`profile` with the active persona's system prompt and sampling on top."""
        return apply_persona(profile, self.config.prompts.get(self.persona or ""))

    def choose_persona(self, name: str | None) -> Profile:
        """The active profile under persona `name` (None: its own prompt); ConfigError if the
        config file has no [prompts.NAME] of that name."""
        if name is not None and name not in self.config.prompts:
            known = ", ".join(self.config.prompts) or "none in the config file"
            raise ConfigError(f"no persona '{name}' ([prompts.{name}]); personas: {known}")
        self.persona = name
        return self.profile()

    def switch(self, name: str) -> Profile:
        """Profile `name` with the CLI flags; in-place edits are dropped. ConfigError if unknown."""
        profile = resolve_profile(self.config, name, self.overrides)
        self.name, self.edits = name, {}
        return self._dressed(profile)

    def edit(self, key: str, text: str) -> Profile:
        """The active profile with `key` set from `text`; ConfigError (nothing kept) if invalid."""
        value: Any = text.strip()
        if key == "seed" and value in ("", "random"):
            value = "-1"
        edits = {**self.edits, key: value}
        profile = resolve_profile(self.config, self.name, {**self.overrides, **edits})
        self.edits = edits
        return self._dressed(profile)

    def changed_on_disk(self) -> bool:
        return self.config.path is not None and _stamp(self.config.path) != self.stamp

    def reload(self) -> Profile:
        """Re-read the config file; the active profile re-resolved from it.

        ConfigError (state unchanged) when the file is now invalid or lost the active profile.
        """
        assert self.config.path is not None
        self.stamp = _stamp(self.config.path)
        config = load_config(self.config.path)
        profile = resolve_profile(config, self.name, {**self.overrides, **self.edits})
        self.config = config
        if self.persona not in config.prompts:
            self.persona = None  # its table left the file
        return self._dressed(profile)
