"""Meta's checkpoint folders -> Transformer: params.json + consolidated.NN.pth.

Meta's names are our internal names and its q/k rows are in the interleaved rotary layout
engine/model.py uses, so the only work is merging model-parallel shards: each shard holds a
slice of every projection, cut along the dimension fairscale's parallel layers split.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch

from engine.args import ModelArgs
from engine.errors import ModelLoadError, first_line
from engine.loaders.state import assign_state
from engine.model import Transformer
from engine.placement import Placement

Progress = Callable[[int, int], None]  # (shards done, shards total)

_SHARD = re.compile(r"consolidated\.(\d+)\.pth")
# which dimension model parallelism cut; absent = replicated in every shard (norms)
SPLIT_DIM = {
    "tok_embeddings": 1,  # ParallelEmbedding splits the embedding width
    "output": 0,  # ColumnParallelLinear: output rows
    "attention.wq": 0,
    "attention.wk": 0,
    "attention.wv": 0,
    "attention.wo": 1,  # RowParallelLinear: input columns
    "feed_forward.w1": 0,
    "feed_forward.w3": 0,
    "feed_forward.w2": 1,
}
IGNORED = {"rope.freqs"}  # early Meta checkpoints saved the rotary table; we compute it


def shard_files(folder: Path) -> list[Path]:
    """consolidated.NN.pth in shard order (by NN, not by string order)."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _SHARD.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def split_dim(name: str) -> int | None:
    key = re.sub(r"^layers\.\d+\.", "", name).removesuffix(".weight")
    return SPLIT_DIM.get(key)


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise ModelLoadError(
            f"{path.name} holds pickled Python objects, not plain tensors: refusing to load it "
            "(weights_only)"
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise ModelLoadError(
            f"{path.name} is not a readable PyTorch checkpoint ({first_line(exc)})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path.name} is not a state dict of tensors")
    return {k: v for k, v in state.items() if k not in IGNORED}


def merge_shards(
    shards: list[dict[str, torch.Tensor]], files: list[Path]
) -> dict[str, torch.Tensor]:
    """Concatenate model-parallel slices; replicated tensors must agree across shards."""
    first, names = shards[0], set(shards[0])
    for shard, path in zip(shards[1:], files[1:], strict=True):
        if set(shard) != names:
            odd = sorted(names ^ set(shard))[0]
            raise ModelLoadError(
                f"{path.name} and {files[0].name} hold different tensors ({odd}); "
                "the shards are from different checkpoints"
            )
    merged: dict[str, torch.Tensor] = {}
    for name in first:
        parts = [s[name] for s in shards]
        dim = split_dim(name)
        for part, path in zip(parts[1:], files[1:], strict=True):
            a, b = list(part.shape), list(parts[0].shape)
            if dim is not None and len(a) == len(b) > dim:
                a[dim] = b[dim] = 0  # the split dimension may differ
            if a != b:
                raise ModelLoadError(
                    f"{path.name}: {name} has shape {list(part.shape)} but "
                    f"{list(parts[0].shape)} in {files[0].name}; the shards do not fit together"
                )
        if dim is None or len(parts) == 1:
            if not all(torch.equal(p, parts[0]) for p in parts[1:]):
                raise ModelLoadError(
                    f"{name} differs between {files[0].name} and the other shards; "
                    "the shards are from different checkpoints"
                )
            merged[name] = parts[0]
        else:
            merged[name] = torch.cat(parts, dim=dim)
    return merged


def load_meta_weights(
    folder: Path,
    *,
    placement: Placement,
    vocab_size_hint: int | None = None,
    progress: Progress | None = None,
) -> tuple[Transformer, ModelArgs]:
    params_path = folder / "params.json"
    files = shard_files(folder)
    if not params_path.is_file():
        raise ModelLoadError(f"{folder}: missing params.json beside the .pth checkpoint")
    if not files:
        raise ModelLoadError(f"{folder}: params.json but no consolidated.NN.pth checkpoint")
    try:
        params = json.loads(params_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{params_path}: not valid JSON ({exc})") from None
    shards = []
    for i, path in enumerate(files, 1):
        shards.append(read_shard(path))
        if progress is not None:
            progress(i, len(files))
    state = merge_shards(shards, files)
    emb = state.get("tok_embeddings.weight")
    hint = int(emb.shape[0]) if emb is not None else vocab_size_hint  # the tensor decides
    args = ModelArgs.from_params_json(params, vocab_size_hint=hint, source=params_path.name)
    src = files[0].name if len(files) == 1 else f"{files[0].name}..{files[-1].name}"
    named = ((name, state.pop(name)) for name in list(state))
    model = assign_state(args, named, placement=placement, source=src)
    return model, args
