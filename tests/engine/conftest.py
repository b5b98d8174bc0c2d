"""Fixtures shared by the engine's tests: a loaded engine queue on the module's `profile`
fixture, an empty store in the test's folder, and an empty user cache folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import Profile
from engine.local import LocalBackend
from engine.queue import EngineQueue, LoadRequest, ModelReady
from engine.store import DB_NAME, ConversationStore


@pytest.fixture
def engine(profile: Profile) -> Iterator[EngineQueue]:
    queue = EngineQueue(LocalBackend())
    assert isinstance(list(queue.submit(LoadRequest(profile)))[-1], ModelReady)
    yield queue
    queue.close()


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    return ConversationStore(tmp_path / DB_NAME)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's own user cache folder (LLAMA_TUI_CACHE_DIR), not yet made."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LLAMA_TUI_CACHE_DIR", str(folder))
    return folder
