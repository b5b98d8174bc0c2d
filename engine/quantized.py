"""4-bit GGUF blocks kept 4-bit in memory, multiplied by torch's int4 CPU kernel.

Decode on CPU is bound by memory bandwidth: every token reads every weight once. Keeping the
file's Q4_0/Q4_1 blocks packed (0.5 byte per weight instead of 2 for bfloat16) and multiplying
with ``torch._weight_int4pack_mm_for_cpu`` reads a quarter of the bytes. The kernel computes
w = (q - 8) * scale + zero per group of 32 weights, which holds both formats exactly:
Q4_0 is d * (q - 8) (zero = 0) and Q4_1 is d * q + m (zero = m + 8d). Scales and zeros are
kept in bfloat16, the kernel's activation dtype; that rounding (about 0.4%) is the only change
against the float32 dequantization.

Beside the blocks: wq|wk|wv and w1|w3 fused side by side (one kernel call each), the output
head on the same kernel with exact Q8_0 rows for its top logits (QuantizedHead, Q8Table), and
long prefill chunks on dense bfloat16 GEMMs from one shared scratch buffer (DenseScratch), from
the chunk length where this machine measured them faster (engine/dense_prefill.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from engine.ggml import GGMLType as Q
from engine.heap import trim_heap
from engine.rebuild import Args, rebuild, rebuildable, spec_of

GROUP = 32  # weights per GGUF block = the kernel's group size
INT4_TYPES = frozenset({Q.Q4_0, Q.Q4_1})


def int4_cpu_supported() -> bool:
    """torch >= 2.5 ships the CPU int4 kernels; older builds fall back to dense weights."""
    return hasattr(torch, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch, "_convert_weight_to_int4pack_for_cpu"
    )


@functools.cache
def cpu_flags() -> tuple[str, ...]:
    """The CPU's feature flags (/proc/cpuinfo), in its order; none where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            return tuple(
                next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
            )
    except OSError:
        return ()


class DenseScratch:
    """One bfloat16 buffer that the 4-bit layers of a model dequantize into (W.T), one at a time,
    for a prefill chunk of ``from_rows`` tokens or more: there dense bfloat16 GEMMs (AMX,
    AVX512-BF16) beat the int4 kernel, from a row count this machine measured
    (engine/dense_prefill.py). The buffer, the size of the largest layer, is the only memory
    they add."""

    def __init__(self, from_rows: int) -> None:
        self.from_rows = from_rows
        self.buffer = torch.empty(0, dtype=torch.bfloat16)

    def take(self, rows: int, cols: int) -> torch.Tensor:
        if self.buffer.numel() < rows * cols:
            self.buffer = torch.empty(rows * cols, dtype=torch.bfloat16)
        return self.buffer[: rows * cols].view(rows, cols)


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
        # set: long inputs run dense (engine/dense_prefill.py, share_scratch)
        self.scratch: DenseScratch | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]; the kernel takes 2-D bfloat16 activations
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.scratch is not None and flat.shape[0] >= self.scratch.from_rows:
            weight_t = self.scratch.take(self.in_features, self.out_features)
            out = flat @ dequantize_t(self.packed, self.scales_zeros, weight_t)
        else:
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


# torch's CPU int4 pack works in blocks of output rows: 64 where it was built for AVX-512, 32 for
# AVX2 (the kernel picks by the CPU it runs on); PACK_BLOCK, the largest, is whole blocks on both
PACK_BLOCKS = (64, 32)
PACK_BLOCK = PACK_BLOCKS[0]


def dequantize_t(
    packed: torch.Tensor, scales_zeros: torch.Tensor, out: torch.Tensor, block: int = 0
) -> torch.Tensor:
    """An Int4Linear's W.T [in, out] in bfloat16, written into ``out``: w = (q - 8) * scale +
    zero, in float32 as the kernel computes it, rounded once. Reads torch's CPU pack layout
    (``block`` rows, by default ``pack_block()``'s): per block of B output rows, byte j at
    input k holds row j in its low nibble and row j + B/2 in its high nibble, so runs of B/2
    bytes become runs of B/2 weights of W.T, without a transpose.

    Each step is one dtype over runs as long as the layout allows (nibbles in uint8, one
    permuted copy each into bfloat16, then one multiply-add over whole rows of W.T with the
    scales and zeros made contiguous first): on a 3072 x 576 layer, that addcmul took 2.3 ms
    reading them interleaved, as scales_zeros holds them, against 0.25 ms contiguous."""
    block = block or pack_block()
    n_in, n_out = out.shape
    nb, g, half = n_out // block, n_in // GROUP, block // 2
    blocks = packed.view(nb, n_in, half)  # [b, k, j]
    cols = out.view(n_in, nb, 2, half)  # W.T[k, B b + B/2 nibble + j]
    for nibble, q in enumerate((blocks & 0x0F, blocks >> 4)):
        q -= 8  # 0..15 -> -8..7 as int8, wrapping in uint8
        cols[:, :, nibble].copy_(q.view(torch.int8).permute(1, 0, 2))
    w = out.view(g, GROUP, n_out)
    scale = scales_zeros[..., 0].unsqueeze(1).contiguous()  # [g, 1, out]
    zero = scales_zeros[..., 1].unsqueeze(1).contiguous()
    torch.addcmul(zero, w, scale, out=w)
    return out


@functools.cache
def pack_block() -> int:
    """The rows per block this torch build and CPU pack as dequantize_t reads them; 0 for a
    layout it does not know (checked once, on a small random layer)."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (2 * PACK_BLOCK, 2 * GROUP), generator=gen, dtype=torch.uint8)
    d, zero = torch.rand(2 * PACK_BLOCK, 2), torch.rand(2 * PACK_BLOCK, 2)
    layer = fused_int4_linear([(q, d, zero)])
    if layer.packed.shape != (q.shape[0], q.shape[1] // 2):
        return 0
    sz = layer.scales_zeros.float().transpose(0, 1).repeat_interleave(GROUP, dim=1)
    exact = (q - 8.0) * sz[..., 0] + sz[..., 1]
    for block in PACK_BLOCKS:
        weight_t = torch.empty(q.shape[1], q.shape[0], dtype=torch.bfloat16)
        weight = dequantize_t(layer.packed, layer.scales_zeros, weight_t, block).t()
        if ((weight.float() - exact).abs() <= exact.abs() / 128).all():  # bf16 rounding
            return block
    return 0


def pack_layout_known() -> bool:
    """Whether dequantize_t can read this build's packs (the dense prefill needs it)."""
    return pack_block() != 0


def int4_linear_from_gguf(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> Int4Linear:
    """raw: uint8 [out, bytes_per_row] of Q4_0 or Q4_1 blocks -> an Int4Linear of ``shape``."""
    return fused_int4_linear([int4_groups_from_gguf(raw, ggml_type, shape)])


Groups = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # q [out, in], d and zero [out, in/32]


def int4_groups_from_gguf(raw: np.ndarray, ggml_type: int, shape: tuple[int, ...]) -> Groups:
    """raw: uint8 [out, bytes_per_row] of Q4_0 or Q4_1 blocks -> (q uint8 [out, in] in 0..15,
    d, zero float32 [out, in/32]) with w = (q - 8) * d + zero, the kernel's form."""
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
    return torch.cat((qs & 0x0F, qs >> 4), dim=-1).reshape(out_f, in_f), d, zero


def fused_int4_linear(parts: list[Groups]) -> Int4Linear:
    """One Int4Linear computing the parts' outputs side by side (wq|wk|wv, w1|w3): one kernel
    call instead of several; each output column is the same sum as in its own matrix."""
    q, d, zero = (torch.cat(t) for t in zip(*parts, strict=True))
    return _int4_linear(q.to(torch.int32), d, zero)


def _int4_linear(q: torch.Tensor, d: torch.Tensor, zero: torch.Tensor) -> Int4Linear:
    # q: int32 [out, in] in 0..15; d, zero: [out, in/32] -> w = (q - 8) * d + zero
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    scales_zeros = torch.stack((d.t(), zero.t()), dim=-1).contiguous().to(torch.bfloat16)
    return Int4Linear(packed, scales_zeros, q.shape[1])


@rebuildable("q8_table")
class Q8Table(nn.Module):
    """A [V, D] table (embedding or output head) in GGUF Q8_0 blocks: int8 weights and one
    float16 scale per 32, 1.06 bytes a weight. Rows are dequantized as they are looked up, with
    the same float32 products as engine/loaders/dequant.py, so a row equals the dense row."""

    qs: torch.Tensor
    d: torch.Tensor

    def __init__(self, qs: torch.Tensor, d: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("qs", qs)  # int8 [V, D]
        self.register_buffer("d", d)  # float16 [V, D/32]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # ids: [...] -> rows [..., D] float32
        q = self.qs[ids].float().unflatten(-1, (-1, GROUP))  # [..., D/32, 32]
        return (self.d[ids].float()[..., None] * q).flatten(-2)

    def rebuild_args(self) -> dict[str, int]:
        return {"rows": self.qs.shape[0], "dim": self.qs.shape[1]}

    @classmethod
    def empty(cls, rows: int, dim: int) -> Q8Table:
        """Buffers on meta, shaped for the weights cache to assign (engine/rebuild.py)."""
        qs = torch.empty(rows, dim, dtype=torch.int8, device="meta")
        return cls(qs, torch.empty(rows, dim // GROUP, dtype=torch.float16, device="meta"))

    def extra_repr(self) -> str:
        return f"rows={self.qs.shape[0]}, dim={self.qs.shape[1]}, Q8_0 blocks of {GROUP}"


def q8_table_from_gguf(raw: np.ndarray, shape: tuple[int, ...]) -> Q8Table:
    """raw: uint8 [V, bytes_per_row] of Q8_0 blocks (d: float16, then 32 int8) -> a Q8Table."""
    rows, dim = shape
    blocks = torch.from_numpy(np.array(raw)).reshape(rows, dim // GROUP, 34)
    d = blocks[..., 0:2].contiguous().view(torch.float16)[..., 0]  # [V, D/32]
    qs = blocks[..., 2:].contiguous().view(torch.int8).reshape(rows, dim)
    return Q8Table(qs, d)


def q8_table(weight: torch.Tensor) -> Q8Table:
    """weight: float [V, D] -> Q8_0 blocks as llama.cpp makes them: d = max|w| / 127 per 32,
    q = round(w / d)."""
    rows, dim = weight.shape
    w = weight.float().reshape(rows, dim // GROUP, GROUP)
    d = (w.abs().amax(-1) / 127).half()  # [V, D/32]
    inv = torch.where(d == 0, 0.0, 1.0 / d.float())
    qs = torch.round(w * inv[..., None]).clamp(-127, 127).to(torch.int8).reshape(rows, dim)
    return Q8Table(qs, d)


@rebuildable("quantized_head")
class QuantizedHead(nn.Module):
    """The output head on the int4 kernel, next to a table of its exact rows.

    The kernel's logits are approximate (the head requantized to 4-bit groups); the caller
    recomputes the top ones from ``rows`` (generate.token_logits, sampling.refine_top_logits).
    ``rows`` is the embedding module itself when the head is tied (Q8Table or nn.Embedding).
    """

    def __init__(self, kernel: Int4Linear, rows: nn.Module) -> None:
        super().__init__()
        self.kernel = kernel
        self.rows = rows  # ids [...] -> float32 rows [..., D]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # h: [B, T, D] float32 -> approximate logits [B, T, V] float32
        return self.kernel(h.float())

    def rebuild_args(self) -> Args:
        # the parts' own kinds; a tied head's rows (the embedding module itself) are linked
        # back to it by the cache's manifest (shared modules)
        return {
            "kernel": spec_of(self.kernel, strict=True),
            "rows": spec_of(self.rows, strict=True),
        }

    @classmethod
    def empty(cls, kernel: Args, rows: Args) -> QuantizedHead:
        return cls(rebuild(kernel), rebuild(rows))  # type: ignore[arg-type]


def int4_linear_from_dense(weight: torch.Tensor) -> Int4Linear:
    """weight: float [out, in] -> 4-bit groups of 32 with a scale and a minimum each, as Q4_1:
    w ~ q * d + m, q in 0..15 (the kernel's zero is m + 8d)."""
    return int4_linear_from_rows(lambda start, end: weight[start:end], *weight.shape)


CHUNK_ROWS = 64 * PACK_BLOCK  # output rows requantized at a time: 9 MB of float32 at D = 576


def int4_linear_from_rows(
    rows: Callable[[int, int], torch.Tensor], out_f: int, in_f: int
) -> Int4Linear:
    """As ``int4_linear_from_dense``, from ``rows(start, end)`` (float [end - start, in]) a chunk
    at a time: the output head (49,152 rows) never exists whole in float32 with its temporaries
    (that was ~600 MB of a first load's peak). The kernel packs each block of PACK_BLOCK rows
    alone, so packs of whole blocks put side by side are the pack of the whole."""
    packed, scales_zeros = [], []
    for start in range(0, out_f, CHUNK_ROWS):
        end = min(start + CHUNK_ROWS, out_f)
        w = rows(start, end).float().reshape(end - start, in_f // GROUP, GROUP)
        lo, hi = w.amin(-1), w.amax(-1)  # [rows, in/32]
        d = (hi - lo) / 15
        inv = torch.where(d == 0, 0.0, 1.0 / d)
        q = torch.round((w - lo[..., None]) * inv[..., None]).clamp(0, 15)
        part = fused_int4_linear([(q.reshape(end - start, in_f), d, lo + 8.0 * d)])
        packed.append(part.packed)
        scales_zeros.append(part.scales_zeros)
        del w, lo, hi, d, inv, q, part
        trim_heap()  # the chunk's temporaries (engine/heap.py): ~15 MiB a chunk kept otherwise
    return Int4Linear(torch.cat(packed), torch.cat(scales_zeros, dim=1), in_f)


def int4_head_supported(vocab: int, dim: int) -> bool:
    """The kernel packs output rows in blocks of 16 and needs whole groups of 32 inputs."""
    return int4_cpu_supported() and vocab % 16 == 0 and dim % GROUP == 0
