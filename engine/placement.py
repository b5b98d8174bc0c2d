"""Where the weights live: device, dtype, bitsandbytes layers, CPU->GPU offload.

``Placement`` is the validated choice; a ``Placer`` applies it while a loader materialises the
weights, one tensor at a time, straight into its final place and form (so loading never holds
two full copies of the model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from engine.args import ModelArgs
from engine.config import OFFLOAD_NAMES, QUANTIZATIONS
from engine.errors import UserError
from engine.model import Transformer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """ "cpu" | "cuda" | "cuda:N" | "auto" -> a device that exists on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f'device {name!r}: no CUDA GPU is available to this torch build; use device = "cpu"'
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return dev
    raise UserError(f"device {name!r} is not one of cpu, cuda, cuda:N, auto")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto": float16 on CUDA; on a CPU the faster of float32 and bfloat16 as measured once
    on this machine (engine/cpu_dtype.py). A GGUF file with Q4_0/Q4_1 blocks then still takes
    bfloat16 for the int4 kernel (Placement.auto_dtype, engine/loaders)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        from engine.cpu_dtype import cpu_dense_dtype

        return cpu_dense_dtype()
    if name not in DTYPES:
        raise UserError(f"dtype {name!r} is not one of {', '.join(DTYPES)}, auto")
    return DTYPES[name]


_PROJECTION = re.compile(r"layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])\.weight")


@dataclass(frozen=True)
class Placement:
    device: torch.device  # where the model computes
    dtype: torch.dtype  # weights (unless quantized) and activations
    quantization: str = "none"  # "none" | "int8" | "nf4": block projections on bitsandbytes
    offload: bool = False  # block weights in pinned host memory, streamed to `device`
    offload_exclusion: frozenset[str] = frozenset()  # block weights that stay on `device`
    native_4bit: bool = False  # GGUF Q4_0/Q4_1 on the CPU int4 kernel (bfloat16, CPU, no bnb)
    auto_dtype: bool = False  # dtype was "auto": a loader may choose bfloat16 for the int4 kernel

    def describe(self) -> str:
        """For the user: "float16", "float16, nf4", "float16, offload (except w1, w2)"."""
        parts = [str(self.dtype).removeprefix("torch.")]
        if self.quantization != "none":
            parts.append(self.quantization)
        if self.offload:
            kept = sorted(self.offload_exclusion)
            parts.append("offload" + (f" (except {', '.join(kept)})" if kept else ""))
        return ", ".join(parts)


def resolve_placement(
    device: str,
    dtype: str,
    quantization: str = "none",
    offload: bool = False,
    offload_exclusion: tuple[str, ...] = (),
    native_4bit: bool = False,
) -> Placement:
    """A profile's settings checked against this machine; every mistake is one line."""
    dev = resolve_device(device)
    if quantization not in QUANTIZATIONS:
        raise UserError(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    if offload and dev.type != "cuda":
        why = "this machine has no CUDA GPU" if not torch.cuda.is_available() else "device is cpu"
        raise UserError(
            "offload = true streams weights from CPU memory to a CUDA GPU, but "
            f'{why}: set offload = false (or device = "cuda")'
        )
    if quantization != "none":
        from engine.bnb_linear import require_bitsandbytes

        require_bitsandbytes(quantization)
    return Placement(
        device=dev,
        dtype=resolve_dtype(dtype, dev),
        quantization=quantization,
        offload=offload,
        offload_exclusion=frozenset(offload_exclusion),
        native_4bit=native_4bit and quantization == "none" and not offload,
        auto_dtype=dtype == "auto",
    )


class Placer:
    """Applies a Placement to one model's weights as a loader produces them."""

    def __init__(self, placement: Placement, args: ModelArgs) -> None:
        from engine.offload import OffloadStore

        self.placement = placement
        self.store = (
            OffloadStore(args, placement.offload_exclusion, placement.device, placement.dtype)
            if placement.offload and not placement.offload_exclusion >= set(OFFLOAD_NAMES)
            else None
        )

    def put(self, name: str, weight: torch.Tensor) -> torch.Tensor | nn.Module:
        """A tensor in its final place and dtype, or a bitsandbytes layer for a projection."""
        p = self.placement
        if self.store is not None and self.store.offloaded(name):
            return self.store.put(name, weight)
        if p.quantization != "none" and _PROJECTION.fullmatch(name):
            from engine.bnb_linear import bnb_linear

            return bnb_linear(weight, p.quantization, p.device, p.dtype)
        return weight.to(device=p.device, dtype=p.dtype)

    def finish(self, model: Transformer) -> None:
        """Start streaming offloaded blocks: a hook before each block fetches its weights."""
        if self.store is not None:
            from engine.offload import stream_blocks

            stream_blocks(model, self.store)
