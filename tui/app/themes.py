"""Theme data files -> textual Theme objects.

The files live in the ``themes`` data package (``themes/*.toml`` at the repository root); they
are found through importlib.resources, so the same code works from a checkout and after
``pip install .`` (pyproject lists ``themes`` as a package with ``*.toml`` package data).
"""

from __future__ import annotations

import sys
from dataclasses import fields
from importlib import resources
from importlib.abc import Traversable
from typing import Any

from textual.theme import Theme

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_THEME = "llama-dark"
_THEME_KEYS = {f.name for f in fields(Theme)}


class ThemeFileError(ValueError):
    """A theme file that cannot become a Theme (one line: file and reason)."""


def theme_from_data(data: dict[str, Any], source: str) -> Theme:
    unknown = sorted(set(data) - _THEME_KEYS)
    if unknown:
        valid = ", ".join(sorted(_THEME_KEYS))
        raise ThemeFileError(f"{source}: unknown key {unknown[0]}; valid: {valid}")
    for key in ("name", "primary"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ThemeFileError(f"{source}: {key} must be a non-empty string")
    try:
        return Theme(**data)
    except Exception as exc:  # textual's Color parser: a bad colour string
        raise ThemeFileError(f"{source}: {exc}") from None


def theme_files() -> list[Traversable]:
    folder = resources.files("themes")
    return sorted((f for f in folder.iterdir() if f.name.endswith(".toml")), key=lambda f: f.name)


def load_themes() -> list[Theme]:
    """Every bundled theme, in file-name order."""
    themes = []
    for file in theme_files():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ThemeFileError(f"{file.name}: invalid TOML: {exc}") from None
        themes.append(theme_from_data(data, file.name))
    return themes
