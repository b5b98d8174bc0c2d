"""4-bit GGUF blocks kept 4-bit in memory, multiplied by torch's int4 CPU kernel.

Decode on CPU is bound by memory bandwidth: every token reads every weight once. Keeping the
file's Q4_0/Q4_1 blocks packed (0.5 byte per weight instead of 2 for bfloat16) and multiplying
with ``torch._weight_int4pack_mm_for_cpu`` reads a quarter of the bytes. The kernel computes
w = (q - 8) * scale + zero per group of 32 weights, which holds both formats exactly:
Q4_0 is d * (q - 8) (zero = 0) and Q4_1 is d * q + m (zero = m + 8d). Scales and zeros are
kept in bfloat16, the kernel's activation dtype; that rounding (about 0.4%) is the only change
against the float32 dequantization.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.ggml import GGMLType as Q
from engine.rebuild import rebuildable

GROUP = 32  # weights per GGUF block = the kernel's group size
INT4_TYPES = frozenset({Q.Q4_0, Q.Q4_1})


def int4_cpu_supported() -> bool:
    """torch >= 2.5 ships the CPU int4 kernels; older builds fall back to dense weights."""
    return hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch, "_convert_weight_to_int4pack_for_cpu"
    )


@rebuildable("int4_linear")
class Int4Linear(nn.Module):
    """y = x @ W.T with W held as packed 4-bit groups: [out, in/2] bytes + [in/32, out, 2]."""

    packed: torch.Tensor
    scales_zeros: torch.Tensor

    def __init__(self, packed: torch.Tensor, scales_zeros: torch.Tensor, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = packed.shape[0]
        self.register_buffer("packed", packed)
        self.register_buffer("scales_zeros", scales_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]; the kernel takes 2-D bfloat16 activations
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales_zeros)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def rebuild_args(self) -> dict[str, int]:
        return {"in_features": self.in_features, "out_features": self.out_features}

    @classmethod
    def empty(cls, in_features: int, out_features: int) -> Int4Linear:
        """Buffers on meta, shaped for the weights cache to assign (engine/rebuild.py)."""
        packed = torch.empty(out_features, in_features // 2, dtype=torch.uint8, device="meta")
        sz = torch.empty(in_features // GROUP, out_features, 2, dtype=torch.bfloat16, device="meta")
        return cls(packed, sz, in_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, 4-bit groups of {GROUP}"


def int4_linear_from_gguf(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> Int4Linear:
    """raw: uint8 [out, bytes_per_row] of Q4_0 or Q4_1 blocks -> an Int4Linear of ``shape``."""
    out_f, in_f = shape
    block_bytes = 18 if ggml_type == Q.Q4_0 else 20
    blocks = torch.from_numpy(np.array(raw)).reshape(out_f, in_f // GROUP, block_bytes)
    d = blocks[..., 0:2].contiguous().view(torch.float16).float()[..., 0]  # [out, in/32]
    if ggml_type == Q.Q4_0:
        zero = torch.zeros_like(d)
        qs = blocks[..., 2:]
    else:
        m = blocks[..., 2:4].contiguous().view(torch.float16).float()[..., 0]
        zero = m + 8.0 * d
        qs = blocks[..., 4:]
    # element j of a block is the low nibble of byte j, element j + 16 the high nibble
    q = torch.cat((qs & 0x0F, qs >> 4), dim=-1).reshape(out_f, in_f).to(torch.int32)
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    scales_zeros = torch.stack((d.t(), zero.t()), dim=-1).contiguous().to(torch.bfloat16)
    return Int4Linear(packed, scales_zeros, in_f)
