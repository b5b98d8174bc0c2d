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

    @classmethod
    def from_params_json(
        cls, params: Mapping[str, Any], *, vocab_size_hint: int | None, source: str = ""
    ) -> ModelArgs:
        """Meta's params.json (Llama 2, 3, 3.1, 3.2 checkpoints)."""

        def need(key: str) -> Any:
            if key not in params:
                raise ModelLoadError(f"{source}: params.json lacks {key!r}")
            return params[key]

        dim = int(need("dim"))
        n_heads = int(need("n_heads"))
        vocab = int(params.get("vocab_size", -1))
        if vocab <= 0:  # Llama 2 writes -1: the tokenizer decides
            if not vocab_size_hint:
                raise ModelLoadError(f"{source}: params.json has no vocab_size and none was given")
            vocab = vocab_size_hint
        # Meta's FeedForward width: 2/3 of 4*dim, scaled, rounded up to a multiple of multiple_of
        multiple_of = int(params.get("multiple_of", 256))
        hidden = int(2 * (4 * dim) / 3)
        if params.get("ffn_dim_multiplier") is not None:
            hidden = int(float(params["ffn_dim_multiplier"]) * hidden)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        scaling = None
        if params.get("use_scaled_rope"):
            scaling = RopeScaling(factor=float(params.get("rope_scaling_factor") or 8.0))
        return cls(
            dim=dim,
            n_layers=int(need("n_layers")),
            n_heads=n_heads,
            n_kv_heads=int(params.get("n_kv_heads") or n_heads),
            vocab_size=vocab,
            ffn_dim=hidden,
            norm_eps=float(params.get("norm_eps", 1e-5)),
            rope_theta=float(params.get("rope_theta", 10000.0)),
            rope_scaling=scaling,
            max_seq_len=int(params.get("max_seq_len", 4096)),
            tie_embeddings=False,  # Meta checkpoints always carry output.weight
        )

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any], source: str = "") -> ModelArgs:
        """A Hugging Face config.json of a LlamaForCausalLM."""
        archs = cfg.get("architectures") or []
        if "LlamaForCausalLM" not in archs and cfg.get("model_type") != "llama":
            what = ", ".join(archs) or cfg.get("model_type") or "unknown"
            raise ModelLoadError(
                f"{source}: config.json of another architecture ({what}); llama-tui runs "
                "LlamaForCausalLM models"
            )

        def need(key: str) -> Any:
            if key not in cfg:
                raise ModelLoadError(f"{source}: config.json lacks {key!r}")
            return cfg[key]

        if cfg.get("hidden_act", "silu") != "silu":
            raise ModelLoadError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported")
        dim = int(need("hidden_size"))
        n_heads = int(need("num_attention_heads"))
        # transformers 5 writes rope settings as rope_parameters; 4.x as rope_theta + rope_scaling
        rope = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
        theta = float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0)
        kind = rope.get("rope_type") or rope.get("type") or "default"
        scaling, linear = None, 1.0
        if kind == "llama3":
            scaling = RopeScaling(
                factor=float(rope.get("factor", 8.0)),
                low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
                original_max_position=int(rope.get("original_max_position_embeddings", 8192)),
            )
        elif kind == "linear":
            linear = float(rope.get("factor", 1.0))
        elif kind != "default":
            raise ModelLoadError(f"{source}: rope scaling {kind!r} is not supported yet")
        return cls(
            dim=dim,
            n_layers=int(need("num_hidden_layers")),
            n_heads=n_heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
            vocab_size=int(need("vocab_size")),
            ffn_dim=int(need("intermediate_size")),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            rope_linear_factor=linear,
            max_seq_len=int(cfg.get("max_position_embeddings", 4096)),
            head_dim=int(cfg.get("head_dim") or dim // n_heads),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
