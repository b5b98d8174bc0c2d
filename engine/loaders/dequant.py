"""GGML block formats -> dense tensors.

The formats of the default model (Q4_0/Q4_1/Q8_0) and the float types are dequantized with
vectorised torch ops (multi-threaded, ~10x faster than numpy); every other type the ``gguf``
package knows (K-quants, I-quants, ternary, MXFP4, ...) goes through ``gguf.quants.dequantize``.
"""

from __future__ import annotations

from collections.abc import Iterator, Set
from enum import IntEnum

import numpy as np
import torch

from engine.ggml import GGMLType as Q

_FAST = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1})


class _Supported(Set[IntEnum]):
    """Types we load: our fast paths plus every block format the gguf package can dequantize
    (its private type table; public API only offers dequantize(), which raises for the rest).
    gguf is imported only when a type outside the fast paths is asked about (engine/ggml.py)."""

    def _all(self) -> frozenset[IntEnum]:
        from gguf import quants

        return _FAST | frozenset(getattr(quants, "_type_traits", {}))

    def __contains__(self, t: object) -> bool:
        return t in _FAST or t in self._all()

    def __iter__(self) -> Iterator[IntEnum]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


SUPPORTED = _Supported()


def _f16(blocks: torch.Tensor, lo: int) -> torch.Tensor:
    # blocks: [N, bytes] uint8 -> the float16 stored at bytes lo..lo+1 of each block, as [N, 1]
    return blocks[:, lo : lo + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    # qs: [N, 16] uint8 -> [N, 32]: low nibbles are elements 0..15, high nibbles 16..31
    return torch.cat((qs & 0x0F, qs >> 4), dim=1).float()


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> torch.Tensor:
    """raw: uint8 [rows, bytes_per_row] -> float32 tensor of ``shape``."""
    if ggml_type == Q.F32:
        return torch.from_numpy(np.array(raw).view(np.float32)).reshape(shape)
    if ggml_type == Q.F16:
        return torch.from_numpy(np.array(raw).view(np.float16)).float().reshape(shape)
    if ggml_type == Q.BF16:
        t = torch.from_numpy(np.array(raw).view(np.int16)).view(torch.bfloat16)
        return t.float().reshape(shape)
    if ggml_type in (Q.Q8_0, Q.Q4_0, Q.Q4_1):
        data = torch.from_numpy(np.array(raw))
        if ggml_type == Q.Q8_0:  # d: f16, qs: 32 x int8
            b = data.reshape(-1, 34)
            out = _f16(b, 0) * b[:, 2:].contiguous().view(torch.int8).float()
        elif ggml_type == Q.Q4_0:  # d: f16, qs: 16 bytes of nibbles, value = d * (q - 8)
            b = data.reshape(-1, 18)
            out = _f16(b, 0) * (_nibbles(b[:, 2:]) - 8.0)
        else:  # Q4_1: d: f16, m: f16, qs: 16 bytes, value = d * q + m
            b = data.reshape(-1, 20)
            out = _f16(b, 0) * _nibbles(b[:, 4:]) + _f16(b, 2)
        return out.reshape(shape)
    from gguf import GGMLQuantizationType, quants

    values = quants.dequantize(np.array(raw), GGMLQuantizationType(ggml_type))
    return torch.from_numpy(values).reshape(shape)
