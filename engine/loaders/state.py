"""The last step every checkpoint loader shares: check a Meta-named state dict, assign it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from engine.args import ModelArgs
from engine.errors import ModelLoadError
from engine.model import Transformer


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
    state: dict[str, torch.Tensor],
    *,
    device: torch.device,
    dtype: torch.dtype,
    source: str,
) -> Transformer:
    """Build the skeleton on meta, check names and shapes, assign the tensors (no copy if
    dtype and device already match, so mmap'd checkpoints stay mapped)."""
    model = Transformer(args, device="meta")
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    for name, tensor in state.items():
        if name not in expected:
            raise ModelLoadError(f"{source}: unexpected tensor {name}; is this a Llama model?")
        if tuple(tensor.shape) != expected[name]:
            raise ModelLoadError(
                f"{source}: tensor {name} has shape {list(tensor.shape)}, expected "
                f"{list(expected[name])} from the config; the checkpoint is inconsistent"
            )
    check_complete(expected, state, source)
    converted = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(converted, assign=True)
    return model.eval()
