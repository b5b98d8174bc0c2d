"""Hugging Face Llama folders -> Transformer: config.json + *.safetensors.

A name map from transformers' names into ours. transformers' converter permuted q/k rows from
Meta's interleaved rotary layout into the rotate-half layout its model uses; engine/model.py
rotates interleaved pairs, so those rows are permuted back here (unpermute_rope).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from engine.args import ModelArgs
from engine.errors import ModelLoadError
from engine.loaders.state import assign_state, map_name
from engine.model import Transformer
from engine.placement import Placement

Progress = Callable[[int, int], None]  # (tensors done, tensors total)

TOP_LEVEL = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
PER_LAYER = {
    "input_layernorm": "attention_norm",
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
}
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.([\w.]+)\.weight")
IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # old exports


def internal_name(hf_name: str) -> str | None:
    return map_name(hf_name, TOP_LEVEL, _LAYER_NAME, PER_LAYER)


def unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head from rotate-half order (all first halves, then all second halves)
    back to interleaved pairs: the inverse of transformers' convert_llama_weights_to_hf
    ``permute`` (view(n_heads, head_dim // 2, 2, dim).transpose(1, 2))."""
    # w: [n_heads * head_dim, dim]
    rows, dim = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, dim).transpose(1, 2).reshape(rows, dim)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def weight_files(folder: Path) -> dict[str, Path]:
    """tensor name -> the .safetensors file holding it (single file or sharded index)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index}: no weight_map")
        files = {name: folder / str(file) for name, file in weight_map.items()}
        for path in set(files.values()):
            if not path.is_file():
                raise ModelLoadError(f"{index.name} names {path.name}, which is missing")
        return files
    single = folder / "model.safetensors"
    if not single.is_file():
        raise ModelLoadError(
            f"{folder}: config.json but no model.safetensors or model.safetensors.index.json "
            "(only safetensors weights are supported)"
        )
    try:
        with safe_open(str(single), framework="pt") as fh:
            return {name: single for name in fh.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"{single.name} is not a readable safetensors file ({exc})") from None


def load_hf_weights(
    folder: Path,
    *,
    placement: Placement,
    progress: Progress | None = None,
) -> tuple[Transformer, ModelArgs]:
    args = ModelArgs.from_hf_config(_read_json(folder / "config.json"), source="config.json")
    files = weight_files(folder)
    src = next(iter(files.values())).name if files else folder.name
    named = _read_tensors(args, files, progress)
    return assign_state(args, named, placement=placement, source=src), args


def _read_tensors(
    args: ModelArgs, files: dict[str, Path], progress: Progress | None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, tensor) one at a time, shard by shard, q/k rows back in Meta's layout."""
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    done, total = 0, len(files)
    for path, names in sorted(by_file.items()):
        try:
            with safe_open(str(path), framework="pt") as fh:
                present = set(fh.keys())
                for name in names:
                    done += 1
                    if IGNORED.fullmatch(name) or (
                        args.tie_embeddings and name == "lm_head.weight"
                    ):
                        continue
                    target = internal_name(name)
                    if target is None:
                        raise ModelLoadError(
                            f"{path.name}: unexpected tensor {name}; is this a Llama model?"
                        )
                    if name not in present:
                        raise ModelLoadError(f"{path.name} lacks {name}, which the index names")
                    tensor = fh.get_tensor(name)
                    if target.endswith("attention.wq.weight"):
                        tensor = unpermute_rope(tensor, args.n_heads)
                    elif target.endswith("attention.wk.weight"):
                        tensor = unpermute_rope(tensor, args.n_kv_heads)
                    yield target, tensor
                    if progress is not None:
                        progress(done, total)
        except SafetensorError as exc:
            raise ModelLoadError(
                f"{path.name} is not a readable safetensors file ({exc})"
            ) from None


def chat_template_text(folder: Path) -> str | None:
    """chat_template.jinja (transformers 5) or tokenizer_config.json's chat_template string."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8") or None
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return None
    text = _read_json(path).get("chat_template")
    return text if isinstance(text, str) and text else None


def special_tokens(folder: Path) -> dict[str, str]:
    """bos_token, eos_token, ... as text, for chat templates that mention them."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    cfg = _read_json(path)
    out: dict[str, str] = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out
