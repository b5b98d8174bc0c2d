"""Rotary position embeddings: per-pair frequencies, the rotation table, and the one rotation.

Pairs are interleaved, (x[2i], x[2i+1]), as in Meta's reference code (GGUF stores q/k so too).
The model rotates q and k by their positions; the cache's context shift rotates moved keys back
with the same function and the conjugate rotation (engine/kv_cache.py).
"""

from __future__ import annotations

import math

import torch

from engine.args import ModelArgs


def rope_inv_freq(args: ModelArgs, freq_factors: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair rotation frequencies [Dh/2], with Llama 3.1 scaling when the model asks for it."""
    dh = args.head_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh))
    s = args.rope_scaling
    if s is not None:
        low_wavelen = s.original_max_position / s.low_freq_factor
        high_wavelen = s.original_max_position / s.high_freq_factor
        wavelen = 2 * math.pi / inv
        smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
        mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
        inv = torch.where(mid, (1 - smooth) * inv / s.factor + smooth * inv, scaled)
    if freq_factors is not None:  # llama.cpp stores Llama 3.1 scaling as a rope_freqs tensor
        inv = inv / freq_factors.double()
    return (inv / args.rope_linear_factor).float()


def rope_table(inv_freq: torch.Tensor, max_len: int, device: torch.device | str) -> torch.Tensor:
    # -> [S, Dh/2] complex64: row p is cos + i sin of p * inv_freq, the rotation of position p
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq.float())
    return torch.complex(angles.cos(), angles.sin()).to(device)


def rotate(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    # x: [..., Dh]; rot: complex, broadcastable to [..., Dh/2]. The pair (x[2i], x[2i+1]) read as
    # x[2i] + i x[2i+1] times cos + i sin is (x0 cos - x1 sin) + i (x0 sin + x1 cos): one multiply
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * rot).flatten(-2).type_as(x)
