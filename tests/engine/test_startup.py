"""A load runs with the cyclic garbage collector off, and it is on again afterwards, whether
the load worked or failed: a chat that runs for hours must collect its garbage."""

from __future__ import annotations

import gc
from dataclasses import replace

import pytest

from engine import ModelLoadError, Profile, ProfileBackend


def test_the_collector_is_off_during_a_load_and_on_after_it(tiny_profile: Profile) -> None:
    seen: list[bool] = []
    backend = ProfileBackend(max_loaded_models=1)
    assert gc.isenabled()
    backend.load(tiny_profile, lambda done, total: seen.append(gc.isenabled()))
    assert seen and not any(seen)  # every progress step ran with the collector off
    assert gc.isenabled()


def test_the_collector_is_on_after_a_failed_load(tiny_profile: Profile) -> None:
    backend = ProfileBackend(max_loaded_models=1)
    with pytest.raises(ModelLoadError, match="nope.gguf"):
        backend.load(replace(tiny_profile, model="nope.gguf"), lambda done, total: None)
    assert gc.isenabled()


def test_a_load_leaves_the_collector_off_when_it_was_off() -> None:
    from engine.startup import collector_paused

    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
