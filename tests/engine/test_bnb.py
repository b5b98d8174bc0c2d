"""bitsandbytes int8 and NF4 on CPU with the default model, compared with float32.

How close is close: along the float32 model's own 40-token greedy reply, feed both models the
same tokens (teacher forcing) and count the positions where their top token agrees. Measured
on these prompts (bitsandbytes 0.50.2, torch 2.13 CPU): int8 0.95-1.0, NF4 0.65-0.83; the
bounds below leave a margin. Both must still answer the factual question correctly.
"""

from __future__ import annotations

import pytest
import torch

from engine.chat_format import Message, encode_dialog
from engine.default_model import default_model_path
from engine.generate import decode_one_token, prefill
from engine.kv_cache import KVCache
from engine.loaders import LoadedModel, load_model
from engine.placement import Placement

pytest.importorskip("bitsandbytes")

CPU = torch.device("cpu")
PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a CPU cache is in two sentences.",
)
MIN_AGREEMENT = {"int8": 0.9, "nf4": 0.6}


def greedy(m: LoadedModel, ids: list[int], n: int = 40) -> list[int]:
    a = m.args
    cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 512, dtype=m.dtype, device=CPU)
    logits, out = prefill(m.model, cache, ids, 0), []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = decode_one_token(m.model, cache, out[-1])
    return out


@torch.inference_mode()
def top1_agreement(a: LoadedModel, b: LoadedModel, prompt: list[int], reply: list[int]) -> float:
    tokens = torch.tensor([prompt + reply])
    span = slice(len(prompt) - 1, -1)  # the positions that predict the reply
    top_a = a.model(tokens)[0, span].argmax(-1)
    top_b = b.model(tokens)[0, span].argmax(-1)
    return float((top_a == top_b).float().mean())


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_quantized_default_model_stays_close_to_float32(
    default_model: LoadedModel, mode: str
) -> None:
    placement = Placement(CPU, torch.float32, quantization=mode)
    q = load_model(default_model_path(), placement=placement, context_length=512)
    layers = {type(m).__name__ for m in q.model.layers[0].modules()}
    assert {"Linear8bitLt" if mode == "int8" else "Linear4bit"} <= layers
    assert type(q.model.tok_embeddings).__name__ == "Embedding"  # not quantized
    assert mode in q.weights
    tok, template = default_model.tokenizer, default_model.chat_template
    assert template is not None
    for text in PROMPTS:
        ids = encode_dialog(tok, template, [Message("user", text)])
        reply = greedy(default_model, ids)
        agreement = top1_agreement(default_model, q, ids, reply)
        assert agreement >= MIN_AGREEMENT[mode], (text, agreement)
    ids = encode_dialog(tok, template, [Message("user", PROMPTS[0])])
    assert "Paris" in tok.decode(greedy(q, ids, 12))
