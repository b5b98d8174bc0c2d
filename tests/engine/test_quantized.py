"""4-bit GGUF blocks run on torch's int4 CPU kernel: same function as the dequantized weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q

from engine.chat_format import Message, encode_dialog
from engine.generate import token_logits
from engine.loaders import LoadedModel, load_model
from engine.loaders.dequant import dequantize
from engine.placement import Placement
from engine.quantized import Int4Linear, int4_cpu_supported, int4_linear_from_gguf
from engine.sampling import refine_top_logits
from tests.engine.test_dequant import random_blocks

pytestmark = pytest.mark.skipif(not int4_cpu_supported(), reason="torch without int4 CPU kernels")
CPU = torch.device("cpu")


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_int4_linear_computes_the_dequantized_product(qtype: Q) -> None:
    raw = random_blocks(qtype, 48, 128, seed=3)
    dense = dequantize(raw, qtype, (48, 128))
    linear = int4_linear_from_gguf(raw, qtype, (48, 128))
    x = torch.randn(5, 128)
    ref = x.bfloat16().float() @ dense.t()
    out = linear(x)
    assert out.shape == (5, 48) and out.dtype == torch.float32
    # bf16 activations and bf16 scales: relative error of a few 1e-3 of the output scale
    assert (out - ref).abs().max() <= 2e-2 * ref.abs().max()
    # it is not an accident of scale: a different weight gives a clearly different product
    other = dequantize(random_blocks(qtype, 48, 128, seed=4), qtype, (48, 128))
    assert (x @ other.t() - ref).abs().max() > 0.2 * ref.abs().max()


@pytest.mark.slow
def test_default_model_runs_4bit_and_agrees_with_float32(
    default_path: Path, default_model: LoadedModel
) -> None:
    packed = load_model(
        default_path, placement=Placement(CPU, torch.bfloat16, native_4bit=True), context_length=256
    )
    assert packed.weights.startswith("4-bit int4 kernel (210 tensors), bfloat16 head")
    assert packed.dtype == torch.float32  # activations and KV cache
    n_int4 = sum(isinstance(m, Int4Linear) for m in packed.model.modules())
    assert n_int4 == 210  # every Q4_1 projection of the 30 blocks; the Q8_0 embedding stays
    assert default_model.chat_template is not None
    ids = encode_dialog(
        default_model.tokenizer,
        default_model.chat_template,
        [Message("user", "What is the capital of France?")],
    )
    with torch.inference_mode():
        a = token_logits(packed.model, torch.tensor([ids]))[0, -1]
        b = token_logits(default_model.model, torch.tensor([ids]))[0, -1]
    # the top two tokens here are 0.08 apart in float32: the 4-bit path keeps their order
    assert a.topk(2).indices.tolist() == b.topk(2).indices.tolist()
    assert (a - b).abs().max() < 1.0
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999


def test_refine_top_logits_breaks_bfloat16_ties_in_float32() -> None:
    weight = torch.tensor([[1.0, 0.0], [1.0, 0.002], [0.0, 0.5]])  # rows 0 and 1: 25 vs 25.05
    h = torch.tensor([[[25.0, 25.0]]])
    coarse = F.linear(h.bfloat16(), weight.bfloat16()).float()
    assert coarse[0, 0, 0] == coarse[0, 0, 1]  # a bfloat16 tie
    refine_top_logits(coarse, h, weight.bfloat16())
    assert int(coarse[0, 0].argmax()) == 1


def test_float32_keeps_dense_weights(tiny_gguf: Path) -> None:
    m = load_model(
        tiny_gguf, placement=Placement(CPU, torch.float32, native_4bit=True), context_length=64
    )
    assert not any(isinstance(x, Int4Linear) for x in m.model.modules())
    assert m.weights == "float32"
