"""Writes tiny GGUF files for tests: random Llama weights with the default model's vocabulary."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, quants

from engine.default_model import default_model_path
from engine.loaders.gguf_file import GGUFFile

TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
)


@lru_cache(maxsize=1)
def default_tokenizer_metadata() -> dict[str, Any]:
    meta = GGUFFile(default_model_path()).metadata
    return {k: meta[k] for k in TOKENIZER_KEYS if k in meta}


def write_tiny_gguf(
    path: Path,
    *,
    dim: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    ffn_dim: int = 128,
    arch: str = "llama",
    seed: int = 0,
    raw_type: GGMLQuantizationType | None = None,
    tied: bool = True,
    quantize: GGMLQuantizationType | None = None,
    quantize_tables: GGMLQuantizationType | None = None,
) -> Path:
    """A random-weight Llama with the SmolLM2 vocabulary (49152 tokens), F32 unless raw_type
    (zero blocks of that type) or ``quantize`` (block projections quantized to that type, as
    llama.cpp would) and ``quantize_tables`` (the embedding and output head likewise)."""
    tok = default_tokenizer_metadata()
    vocab = len(tok["tokenizer.ggml.tokens"])
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", n_layers)
    w.add_uint32(f"{arch}.context_length", 2048)
    w.add_uint32(f"{arch}.embedding_length", dim)
    w.add_uint32(f"{arch}.feed_forward_length", ffn_dim)
    w.add_uint32(f"{arch}.attention.head_count", n_heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", n_kv_heads)
    w.add_float32(f"{arch}.rope.freq_base", 10000.0)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32(f"{arch}.vocab_size", vocab)
    w.add_tokenizer_model(tok["tokenizer.ggml.model"])
    w.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    w.add_token_list(tok["tokenizer.ggml.tokens"])
    w.add_token_types(tok["tokenizer.ggml.token_type"])
    w.add_token_merges(tok["tokenizer.ggml.merges"])
    w.add_bos_token_id(tok["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(tok["tokenizer.ggml.eos_token_id"])
    w.add_add_bos_token(bool(tok.get("tokenizer.ggml.add_bos_token", False)))
    w.add_chat_template(tok["tokenizer.chat_template"])
    hd = dim // n_heads

    def t(name: str, *shape: int, scale: float = 0.05) -> None:
        data = (rng.standard_normal(shape) * scale).astype(np.float32)
        qtype = quantize_tables if name in ("token_embd.weight", "output.weight") else quantize
        if qtype is not None:
            raw = quants.quantize(data, qtype)
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        elif raw_type is not None and len(shape) > 1:
            block, nbytes = GGML_QUANT_SIZES[raw_type]
            raw = np.zeros((shape[0], shape[1] // block * nbytes), dtype=np.uint8)
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=raw_type)
        else:
            w.add_tensor(name, data)

    t("token_embd.weight", vocab, dim, scale=1.0)
    for i in range(n_layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, dtype=np.float32))
        t(f"blk.{i}.attn_q.weight", n_heads * hd, dim)
        t(f"blk.{i}.attn_k.weight", n_kv_heads * hd, dim)
        t(f"blk.{i}.attn_v.weight", n_kv_heads * hd, dim)
        t(f"blk.{i}.attn_output.weight", dim, n_heads * hd)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, dtype=np.float32))
        t(f"blk.{i}.ffn_gate.weight", ffn_dim, dim)
        t(f"blk.{i}.ffn_up.weight", ffn_dim, dim)
        t(f"blk.{i}.ffn_down.weight", dim, ffn_dim)
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    if not tied:
        t("output.weight", vocab, dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
