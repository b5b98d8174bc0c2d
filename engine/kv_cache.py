"""KVCache: preallocated key/value buffers that outlive a dialogue turn.

The cache remembers which token ids it holds, so a new prompt reuses the longest common prefix
and only the rest is prefilled. Writes go through ``update(layer, start, k, v)``: no per-token
concatenation, no reallocation. ``shift`` drops a span of positions and moves the rest down,
re-rotating their keys, so a trimmed dialogue keeps its cache warm (a "context shift").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.rope import rotate


class KVCache:
    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        *,
        batch: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch, n_kv_heads, max_len, head_dim)  # [B, KV, S, Dh]
        # empty, not zeros: slots past the length are never read, and zeroing every buffer
        # up front cost 0.1-0.5 s of each start (and resident memory for the whole context)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.tokens: list[int] = []  # ids whose keys/values are stored, in order (batch 1)

    @classmethod
    def over(cls, k: Sequence[torch.Tensor], v: Sequence[torch.Tensor]) -> KVCache:
        """A cache over existing buffers [B, KV, S, Dh] per layer, holding no token ids (the
        compiled step's traced inputs: engine/compiled.py)."""
        cache = cls.__new__(cls)
        cache.k, cache.v = list(k), list(v)
        cache.max_len = k[0].shape[2]
        cache.tokens = []
        return cache

    @property
    def length(self) -> int:
        return len(self.tokens)

    def update(
        self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: [B, KV, T, Dh] for positions start..start+T-1; returns views over 0..start+T-1
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def common_prefix(self, ids: Sequence[int]) -> int:
        """Length of the longest prefix of ``ids`` whose keys/values are already cached."""
        n = 0
        for a, b in zip(self.tokens, ids, strict=False):
            if a != b:
                break
            n += 1
        return n

    def truncate(self, n: int) -> None:
        """Forget everything after the first ``n`` tokens (the buffers past n become garbage)."""
        del self.tokens[n:]

    def append(self, ids: Sequence[int]) -> None:
        """Record that keys/values for ``ids`` were just written after the current length."""
        self.tokens.extend(ids)
        assert len(self.tokens) <= self.max_len

    def shift(self, start: int, end: int, rot: torch.Tensor) -> None:
        """Remove positions [start, end); the entries after them move down by d = end - start.

        Keys carry RoPE rotations by their position, so moved keys are rotated back by d: ``rot``
        [Dh/2] is the model's rope table row d (engine.rope), applied conjugated. Values carry
        no position and are only moved. (Deeper-layer entries still reflect attention to the
        removed tokens: a shift approximates a recompute, as llama.cpp's context shift does.)
        """
        n = self.length - end
        if not 0 <= start <= end <= self.length:
            raise ValueError(f"cannot shift out [{start}, {end}) of {self.length} cached tokens")
        if end == start:
            return
        back = rot.conj()  # [Dh/2]: rotation by -d
        for k, v in zip(self.k, self.v, strict=True):
            k[:, :, start : start + n] = rotate(k[:, :, end : end + n], back)  # [B, KV, n, Dh]
            v[:, :, start : start + n] = v[:, :, end : end + n].clone()
        del self.tokens[start:end]
