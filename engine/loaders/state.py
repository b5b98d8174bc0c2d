"""The last step every checkpoint loader shares: check a Meta-named state dict, assign it."""

from __future__ import annotations

import torch

from engine.args import ModelArgs
from engine.errors import ModelLoadError
from engine.model import Transformer


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
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ModelLoadError(
            f"{source}: missing tensors for {missing[0]} (and {len(missing) - 1} more)"
        )
    converted = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(converted, assign=True)
    return model.eval()
