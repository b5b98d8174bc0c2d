"""The last step every checkpoint loader shares: check a Meta-named state dict, assign it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from engine.args import ModelArgs
from engine.errors import ModelLoadError
from engine.model import Transformer
from engine.placement import Placement, Placer


def map_name(
    name: str,
    top_level: Mapping[str, str],
    layer_name: re.Pattern[str],
    per_layer: Mapping[str, str],
) -> str | None:
    """A checkpoint's tensor name in our naming, through a loader's two tables (None: unknown).

    ``layer_name`` captures the layer number and the per-layer part of a block's weight name.
    """
    if name in top_level:
        return top_level[name]
    m = layer_name.fullmatch(name)
    if m and m.group(2) in per_layer:
        return f"layers.{m.group(1)}.{per_layer[m.group(2)]}.weight"
    return None


def check_complete(expected: Iterable[str], present: Iterable[str], source: str) -> None:
    """One line naming the first weight the model needs that the checkpoint lacks."""
    missing = sorted(set(expected) - set(present))
    if missing:
        raise ModelLoadError(
            f"{source}: missing tensors for {missing[0]} (and {len(missing) - 1} more)"
        )


def assign_state(
    args: ModelArgs,
    named: Iterable[tuple[str, torch.Tensor]],
    *,
    placement: Placement,
    source: str,
) -> Transformer:
    """Build the skeleton on meta, then check and place each tensor as it is read, so the
    checkpoint's copy of one tensor is released once its placed copy exists."""
    model = Transformer(args, device="meta")
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    placer = Placer(placement, args)
    placed: dict[str, torch.Tensor | nn.Module] = {}
    for name, tensor in named:
        if name not in expected:
            raise ModelLoadError(f"{source}: unexpected tensor {name}; is this a Llama model?")
        if tuple(tensor.shape) != expected[name]:
            raise ModelLoadError(
                f"{source}: tensor {name} has shape {list(tensor.shape)}, expected "
                f"{list(expected[name])} from the config; the checkpoint is inconsistent"
            )
        placed[name] = placer.put(name, tensor)
    check_complete(expected, placed, source)
    return install(model, placed, placer)


def install(
    model: Transformer, placed: Mapping[str, torch.Tensor | nn.Module], placer: Placer
) -> Transformer:
    """Assign placed tensors, swap in placed layers (bitsandbytes, int4) by their names, and
    hook the offload streamer in if the placement has one."""
    tensors = {n: v for n, v in placed.items() if isinstance(v, torch.Tensor)}
    for name, value in placed.items():
        if isinstance(value, nn.Module):
            model.set_submodule(name.removesuffix(".weight"), value)
    model.load_state_dict(tensors, assign=True, strict=len(tensors) == len(placed))
    placer.finish(model)
    return model.eval()
