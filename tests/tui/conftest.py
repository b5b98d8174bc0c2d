"""A config whose profiles use the tiny random-weight GGUF (tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_CONFIG = """\
default_profile = "tiny"

[defaults]
model = "{model}"
dtype = "float32"
context_length = 512
max_new_tokens = 24
temperature = 1.0
top_k = 50
seed = 0
theme = "llama-dark"

[profiles.tiny]

[profiles.tiny-hot]
temperature = 1.3
top_k = 8

[profiles.tiny-bf16]
dtype = "bfloat16"

[profiles.long]
context_length = 4096
max_new_tokens = 4000
"""

# overrides for the "long" profile: a reply that outlasts any test that stops it. The tiny
# model ran 4,000 tokens before a pilot's key press returned on a fast VM (a press waits
# until the app is idle), so such tests send with app.chat.send and stop it themselves.
ENDLESS = {"context_length": 40_000, "max_new_tokens": 39_000}


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_gguf: Path) -> Path:
    path = tmp_path / "llama-tui.toml"
    path.write_text(TINY_CONFIG.format(model=tiny_gguf.as_posix()))
    return path
