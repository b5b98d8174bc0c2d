"""The placement bench: its worker on a tiny shape, its table, and its size estimate."""

from __future__ import annotations

import pytest

from engine.loaders import LoadedModel
from tui.bench.placement import MODES, format_table, limit_tok_s, too_big, weight_bytes, worker


def test_weight_estimate_matches_the_real_135m_model(default_model: LoadedModel) -> None:
    params = sum(p.numel() for p in default_model.model.parameters())
    assert weight_bytes("135m", 4.0) == params * 4


def test_worker_measures_a_tiny_cpu_model_against_its_limit() -> None:
    r = worker("cpu", "tiny", tokens=4, runs=1, prompt_len=8)
    assert r["placement"] == "float32" and r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0
    # resident bytes read per token: every weight but the (untied) embedding table
    assert r["read_bytes_per_token"] == weight_bytes("tiny", 4.0) - 512 * 256 * 4
    assert limit_tok_s(r) == pytest.approx(r["memory_gb_s"] * 1e9 / r["read_bytes_per_token"])
    row = format_table([r]).splitlines()[2]
    assert row.startswith("| cpu | float32 |") and row.endswith("| - | - |")


def test_modes_that_cannot_fit_are_skipped_with_a_reason() -> None:
    gib = 2**30
    assert too_big("tiny", MODES["cpu"], free_ram=8 * gib, free_gpu=None) is None
    assert too_big("13b", MODES["cpu"], free_ram=64 * gib, free_gpu=None) is None
    assert "GiB of free RAM" in (too_big("13b", MODES["cpu"], 8 * gib, None) or "")  # 48 GiB
    assert "GiB of free GPU memory" in (too_big("7b", MODES["gpu"], 8 * gib, 4 * gib) or "")
    assert too_big("7b", MODES["nf4"], 8 * gib, 4 * gib) is None  # ~3.5 GiB packed
    assert "GiB of free RAM" in (too_big("7b", MODES["off_all"], 8 * gib, 80 * gib) or "")
