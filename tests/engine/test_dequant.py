"""Our vectorised torch dequantizers agree bit for bit with the gguf package's reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as Q

from engine.loaders.dequant import SUPPORTED, dequantize


def random_blocks(qtype: Q, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random quantized rows whose float16 scale fields hold finite, moderate values."""
    block, nbytes = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, cols // block, nbytes), dtype=np.uint8)
    n_halves = {Q.Q8_0: 1, Q.Q4_0: 1, Q.Q4_1: 2}.get(qtype, 0)
    if n_halves:
        scales = rng.uniform(-0.1, 0.1, size=(rows, cols // block, n_halves)).astype(np.float16)
        raw[..., : 2 * n_halves] = scales.view(np.uint8).reshape(rows, cols // block, -1)
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_fast_paths_match_gguf_reference(qtype: Q) -> None:
    raw = random_blocks(qtype, 8, 256)
    ours = dequantize(raw, qtype, (8, 256))
    ref = torch.from_numpy(quants.dequantize(raw, qtype)).reshape(8, 256)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16])
def test_float_types_round_trip(qtype: Q) -> None:
    values = torch.linspace(-3, 3, 64).reshape(2, 32)
    dtype = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}[qtype]
    stored = values.to(dtype)
    raw = stored.view(torch.uint8).numpy().reshape(2, -1)
    assert torch.equal(dequantize(raw, qtype, (2, 32)), stored.float())


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_k_quants_dequantize_through_gguf_to_the_right_shape(qtype: Q) -> None:
    raw = random_blocks(qtype, 2, 512)
    out = dequantize(raw, qtype, (2, 512))
    assert out.shape == (2, 512) and out.dtype == torch.float32
    assert qtype in SUPPORTED


@pytest.mark.parametrize("qtype", [Q.IQ4_NL, Q.TQ2_0, Q.Q2_K])
def test_any_type_the_gguf_package_dequantizes_is_accepted(qtype: Q) -> None:
    block = GGML_QUANT_SIZES[qtype][0]
    raw = random_blocks(qtype, 2, max(block, 256))
    assert qtype in SUPPORTED
    assert dequantize(raw, qtype, (2, max(block, 256))).shape == (2, max(block, 256))
    assert Q.Q8_1 not in SUPPORTED  # gguf cannot dequantize it: refused at load
