"""Fixtures shared by the engine's controller and store tests: a loaded engine queue on the
module's `profile` fixture, and an empty store in the test's folder."""

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
