"""Tiny random-weight Llama GGUF (the default model's vocabulary) and a config that uses it."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from engine.default_model import default_model_path
from engine.loaders.gguf_file import GGUFFile

DIM, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer llama with random F32 weights and SmolLM2's tokenizer and chat template."""
    meta = GGUFFile(default_model_path()).metadata
    vocab = len(meta["tokenizer.ggml.tokens"])
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(2048)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(DIM // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    w.add_token_merges(meta["tokenizer.ggml.merges"])
    w.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
    w.add_unk_token_id(meta["tokenizer.ggml.unknown_token_id"])
    w.add_pad_token_id(meta["tokenizer.ggml.padding_token_id"])
    w.add_add_bos_token(meta["tokenizer.ggml.add_bos_token"])
    w.add_add_space_prefix(meta["tokenizer.ggml.add_space_prefix"])
    w.add_chat_template(meta["tokenizer.chat_template"])
    rng = np.random.default_rng(seed)

    def t(name: str, *shape: int, scale: float = 0.05) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    hd = DIM // HEADS
    t("token_embd.weight", vocab, DIM, scale=1.0)
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(DIM, np.float32))
        t(f"blk.{i}.attn_q.weight", HEADS * hd, DIM)
        t(f"blk.{i}.attn_k.weight", KV_HEADS * hd, DIM)
        t(f"blk.{i}.attn_v.weight", KV_HEADS * hd, DIM)
        t(f"blk.{i}.attn_output.weight", DIM, HEADS * hd)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(DIM, np.float32))
        t(f"blk.{i}.ffn_gate.weight", FFN, DIM)
        t(f"blk.{i}.ffn_up.weight", FFN, DIM)
        t(f"blk.{i}.ffn_down.weight", DIM, FFN)
    w.add_tensor("output_norm.weight", np.ones(DIM, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")


TINY_CONFIG = """\
default_profile = "tiny"

[defaults]
model = "{model}"
context_length = 512
max_new_tokens = 24
temperature = 1.0
top_k = 50
seed = 0
theme = "llama-dark"

[profiles.tiny]

[profiles.tiny-hot]
temperature = 1.3
top_k = 8

[profiles.tiny-bf16]
dtype = "bfloat16"

[profiles.long]
max_new_tokens = 400
"""


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_model: Path) -> Path:
    path = tmp_path / "llama-tui.toml"
    path.write_text(TINY_CONFIG.format(model=tiny_model.as_posix()))
    return path
