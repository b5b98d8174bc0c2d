"""CUDA placements of the default model: fp16/bf16, int8, NF4, offload. Skipped without CUDA;
the offload machinery itself is tested on CPU in test_offload.py."""

from __future__ import annotations

import pytest
import torch

from engine.chat_format import Message, encode_dialog
from engine.default_model import default_model_path
from engine.errors import UserError
from engine.generate import decode_one_token, prefill, token_logits
from engine.kv_cache import KVCache
from engine.loaders import LoadedModel, load_model
from engine.offload import BlockStreamer
from engine.placement import Placement, resolve_placement

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = torch.device("cuda")
PROMPT = "Explain what a CPU cache is in two sentences."
FEED_FORWARD = frozenset({"w1", "w2", "w3", "ffn_norm"})
ATTENTION = frozenset({"wq", "wk", "wv", "wo", "attention_norm"})


def load(**kw: object) -> LoadedModel:
    placement = Placement(GPU, kw.pop("dtype", torch.float16), **kw)  # type: ignore[arg-type]
    return load_model(default_model_path(), placement=placement, context_length=512)


def ids_of(m: LoadedModel) -> list[int]:
    assert m.chat_template is not None
    return encode_dialog(m.tokenizer, m.chat_template, [Message("user", PROMPT)])


def greedy(m: LoadedModel, ids: list[int], n: int = 40) -> tuple[list[int], list[torch.Tensor]]:
    a = m.args
    cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 512, dtype=m.dtype, device=m.device)
    logits, out, seen = prefill(m.model, cache, ids, 0), [], []
    for _ in range(n):
        seen.append(logits.float().cpu())
        out.append(int(logits.argmax()))
        logits = decode_one_token(m.model, cache, out[-1])
    return out, seen


@torch.inference_mode()
def agreement(ref: LoadedModel, m: LoadedModel, ids: list[int], reply: list[int]) -> float:
    span = slice(len(ids) - 1, -1)
    a = token_logits(ref.model, torch.tensor([ids + reply]))[0, span].argmax(-1)
    b = token_logits(m.model, torch.tensor([ids + reply], device=m.device))[0, span]
    b = b.argmax(-1).cpu()
    return float((a == b).float().mean())


@pytest.mark.parametrize(
    ("kw", "bound"),
    [
        ({"dtype": torch.float16}, 0.95),
        ({"dtype": torch.bfloat16}, 0.9),
        ({"quantization": "int8"}, 0.9),
        ({"quantization": "nf4"}, 0.6),
        ({"offload": True, "quantization": "int8", "offload_exclusion": FEED_FORWARD}, 0.9),
    ],
    ids=["fp16", "bf16", "int8", "nf4", "offload-attention+int8-ffn"],
)
def test_gpu_placements_track_float32(default_model: LoadedModel, kw: dict, bound: float) -> None:
    if kw.get("quantization", "none") != "none":
        pytest.importorskip("bitsandbytes")
    m = load(**kw)
    ids = ids_of(default_model)
    reply, _ = greedy(default_model, ids)
    assert agreement(default_model, m, ids, reply) >= bound


@pytest.mark.parametrize(
    "exclusion", [frozenset(), FEED_FORWARD, ATTENTION], ids=["all", "attention", "ffn"]
)
def test_offload_logits_equal_resident_fp16(exclusion: frozenset) -> None:
    resident = load()
    offloaded = load(offload=True, offload_exclusion=exclusion)
    assert isinstance(offloaded.streamer, BlockStreamer)
    ids = ids_of(resident)
    tokens_a, logits_a = greedy(resident, ids, 16)
    tokens_b, logits_b = greedy(offloaded, ids, 16)
    assert tokens_a == tokens_b
    assert all(torch.equal(x, y) for x, y in zip(logits_a, logits_b, strict=True))
    s = offloaded.streamer
    assert s.bytes_copied > 0 and s.store.host[0] is not None and s.store.host[0].is_pinned()


def test_cuda_index_past_the_last_gpu_is_a_one_line_error() -> None:
    n = torch.cuda.device_count()
    with pytest.raises(UserError, match=rf"device 'cuda:{n + 2}': this machine has {n} CUDA"):
        resolve_placement(f"cuda:{n + 2}", "auto")
    assert resolve_placement("auto", "auto").device.type == "cuda"
    assert resolve_placement("auto", "auto").dtype == torch.float16
