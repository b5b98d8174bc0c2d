"""Shared fixtures: the embedded default model, a tiny random GGUF, and transformers peers."""

from __future__ import annotations

import asyncio
import inspect
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.config import Profile, SamplingSettings
from engine.default_model import default_model_path
from engine.loaders import LoadedModel, load_model
from engine.loaders.gguf_file import GGUFFile
from engine.placement import Placement
from engine.tokenizers import Tokenizer, load_tokenizer_from_gguf
from tests.gguf_writer import write_tiny_gguf

CPU = torch.device("cpu")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests with asyncio.run (no pytest-asyncio needed for Pilot tests)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{n: pyfuncitem.funcargs[n] for n in names}))
    return True


@pytest.fixture(scope="session", autouse=True)
def private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conversations saved by tests (and their subprocesses) stay out of the user's data dir."""
    path = tmp_path_factory.mktemp("data")
    os.environ["LLAMA_TUI_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared weights and the dtype verdict cached by tests stay out of the user's cache."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["LLAMA_TUI_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def no_background_compile() -> None:
    """Loaded profiles decode on the eager step: no compile threads in the app and CLI tests
    (tests/engine/test_compiled.py compiles on purpose)."""
    os.environ["LLAMA_TUI_COMPILE"] = "0"


@pytest.fixture(scope="session")
def default_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def default_model(default_path: Path) -> LoadedModel:
    """The embedded SmolLM2-135M-Instruct in float32 (shared: tests must not keep cache state)."""
    return load_model(default_path, placement=Placement(CPU, torch.float32), context_length=2048)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_model(tiny_gguf: Path) -> LoadedModel:
    return load_model(tiny_gguf, placement=Placement(CPU, torch.float32), context_length=256)


@pytest.fixture
def tiny_profile(tiny_gguf: Path) -> Profile:
    """A profile for the tiny model: float32 on the CPU, greedy, short replies."""
    greedy = SamplingSettings(temperature=0.0, seed=0)
    return Profile("tiny", model=str(tiny_gguf), dtype="float32", max_new_tokens=6, sampling=greedy)


@pytest.fixture(scope="session")
def hf_model(default_path: Path) -> Any:
    """transformers' LlamaForCausalLM on the same GGUF: the independent reference."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(default_path.parent), gguf_file=default_path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def gguf_path(default_path: Path) -> Path:
    return default_path


@pytest.fixture(scope="session")
def metadata(default_path: Path) -> dict[str, Any]:
    return GGUFFile(default_path).metadata


@pytest.fixture(scope="session")
def tok(metadata: dict[str, Any], default_path: Path) -> Tokenizer:
    return load_tokenizer_from_gguf(metadata, default_path.name)


@pytest.fixture(scope="session")
def hf_tok(default_path: Path) -> Any:
    """transformers' tokenizer from the same GGUF, with SmolLM2's published pre-tokenizer.

    transformers' GGUF loader has no split for tokenizer.ggml.pre "smollm" and falls back to the
    plain GPT-2 ByteLevel split; SmolLM2's tokenizer.json (and llama.cpp) split digits first.
    """
    transformers = pytest.importorskip("transformers")
    from tokenizers import pre_tokenizers

    hf = transformers.AutoTokenizer.from_pretrained(
        str(default_path.parent), gguf_file=default_path.name
    )
    hf.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return hf
