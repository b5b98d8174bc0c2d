"""`llama-tui serve` with the embedded model, once for the module's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import SERVE_CONFIG, TEST_KEY, TEST_KEY_ENV, free_port, running, serve_argv


@pytest.fixture(scope="session")
def serve_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "llama-tui.toml"
    path.write_text(SERVE_CONFIG)
    return path


@pytest.fixture(scope="session")
def serve_url(serve_config: Path) -> Iterator[str]:
    port = free_port()
    with running(serve_argv(serve_config, port), port, {TEST_KEY_ENV: TEST_KEY}) as peer:
        yield peer.url
