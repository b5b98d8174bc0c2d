"""ModelArgs: the shape of a Llama-family model, read from a file's metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import ModelLoadError


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1-style frequency scaling ("rope_type": "llama3")."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class ModelArgs:
    dim: int  # model width D
    n_layers: int
    n_heads: int
    n_kv_heads: int  # < n_heads: grouped-query attention
    vocab_size: int
    ffn_dim: int  # hidden width of the SwiGLU feed-forward
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rope_linear_factor: float = 1.0  # positions divided by this ("linear" scaling)
    max_seq_len: int = 4096  # the model's trained context length
    head_dim: int = 0  # 0 = dim // n_heads
    tie_embeddings: bool = False  # output head shares tok_embeddings.weight

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ModelLoadError(
                f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}"
            )

    @classmethod
    def from_gguf(cls, meta: Mapping[str, Any], *, has_output: bool, source: str = "") -> ModelArgs:
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise ModelLoadError(
                f"{source}: unsupported architecture {arch!r}; llama-tui runs Llama-family "
                "models (general.architecture = 'llama')"
            )

        def need(key: str) -> Any:
            if f"llama.{key}" not in meta:
                raise ModelLoadError(f"{source}: GGUF metadata lacks llama.{key}; file is corrupt")
            return meta[f"llama.{key}"]

        n_heads = int(need("attention.head_count"))
        dim = int(need("embedding_length"))
        vocab = meta.get("llama.vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))
        scaling_type = meta.get("llama.rope.scaling.type", "none")
        linear = 1.0
        if scaling_type == "linear":
            linear = float(meta.get("llama.rope.scaling.factor", 1.0))
        elif scaling_type not in ("none", ""):
            raise ModelLoadError(f"{source}: rope scaling {scaling_type!r} is not supported yet")
        return cls(
            dim=dim,
            n_layers=int(need("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(meta.get("llama.attention.head_count_kv", n_heads)),
            vocab_size=int(vocab),
            ffn_dim=int(need("feed_forward_length")),
            norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
            rope_linear_factor=linear,
            max_seq_len=int(meta.get("llama.context_length", 4096)),
            head_dim=int(meta.get("llama.attention.key_length", dim // n_heads)),
            tie_embeddings=not has_output,
        )
