"""The Llama architecture in plain PyTorch, read top to bottom.

Weights use Meta's layout and names (tok_embeddings, layers.N.attention.wq, ...,
feed_forward.w1/w2/w3, norm, output). Rotary embeddings (engine/rope.py) rotate interleaved
pairs (x[2i], x[2i+1]) as Meta's reference code does; GGUF files store q/k in that layout too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.args import ModelArgs
from engine.kv_cache import KVCache
from engine.quantized import QuantizedHead
from engine.rope import rope_inv_freq, rope_table, rotate

ROW_BY_ROW = 16  # chunks this short after cached tokens attend one query row at a time

Device = torch.device | str | None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, device: Device = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., D]; normalise in float32 whatever the weight dtype (one fused kernel)
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


def one_token_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One position's attention over everything cached: q [B, KV, n_rep, Dh] (the query heads
    sharing each KV head), k, v [B, KV, S, Dh] -> [B, KV, n_rep, Dh]. Eagerly SDPA; compiled,
    attention_sums."""
    if torch.compiler.is_compiling():
        return attention_sums(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def attention_sums(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """one_token_attention as sums, which inductor fuses into loops reading the cache where it
    lies. SDPA's flash kernel spends ~70 us a call at one query row (2 ms of a SmolLM2 step),
    and matmuls would first copy the cache's strided views (more still). Eagerly these sums
    would build [B, KV, n_rep, S, Dh] products: compiled only."""
    scores = (q[:, :, :, None] * k[:, :, None]).sum(-1) * q.shape[-1] ** -0.5  # [B, KV, r, S]
    weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return (weights[..., None] * v[:, :, None]).sum(-2)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int, device: Device = None) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        # projections here and in FeedForward: a placement may swap in a quantized layer by name
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False, device=device)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False, device=device)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False, device=device)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False, device=device)
        self.wqkv: nn.Module | None = None  # wq, wk, wv side by side, once fused (fuse)
        self.qkv_sizes = (args.n_heads * args.head_dim, *(2 * [args.n_kv_heads * args.head_dim]))

    def fuse(self, wqkv: nn.Module) -> None:
        """Compute q, k, v with one layer (a 4-bit loader: one kernel call instead of three)."""
        del self.wq, self.wk, self.wv
        self.wqkv = wqkv

    def forward(
        self,
        x: torch.Tensor,
        rot: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        start: int,
    ) -> torch.Tensor:
        # x: [B, T, D]; rot: [T, 1, Dh/2] complex rotations for positions start..start+T-1
        B, T, _ = x.shape
        if self.wqkv is None:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        else:
            q, k, v = self.wqkv(x).split(self.qkv_sizes, dim=-1)
        q = rotate(q.view(B, T, self.n_heads, self.head_dim), rot)
        k = rotate(k.view(B, T, self.n_kv_heads, self.head_dim), rot)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, KV, T, Dh]
        if cache is not None:
            k, v = cache.update(self.layer, start, k, v)  # [B, KV, S, Dh]
        # Grouped-query attention without copying K/V: the n_rep query heads that share one
        # KV head become extra query rows of that head. q: [B, KV, n_rep * T, Dh]
        n_rep = self.n_heads // self.n_kv_heads
        q = q.view(B, T, self.n_kv_heads, n_rep, self.head_dim).permute(0, 2, 3, 1, 4)
        q = q.reshape(B, self.n_kv_heads, n_rep * T, self.head_dim)
        if cache is not None and T == 1:
            out = one_token_attention(q, k, v)  # a decode step
        elif cache is not None and T <= ROW_BY_ROW:
            # a short chunk after cached tokens (a speculative draft): each query row attends
            # alone, exactly as a one-token step computes it, so drafts change no rounding
            rows = q.view(B, self.n_kv_heads, n_rep, T, self.head_dim)
            out = torch.stack(
                [
                    one_token_attention(
                        rows[:, :, :, t], k[:, :, : start + t + 1], v[:, :, : start + t + 1]
                    )
                    for t in range(T)
                ],
                dim=3,
            )  # [B, KV, n_rep, T, Dh]
        else:
            # mask: [n_rep * T, S] over the rows of q (Transformer.attention_mask), in the
            # activations' dtype; cast only where a quantized layer returned another one
            if mask is not None:
                mask = mask.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.view(B, self.n_kv_heads, n_rep, T, self.head_dim).permute(0, 3, 1, 2, 4)
        return self.wo(out.reshape(B, T, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs, device: Device = None) -> None:
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.ffn_dim, bias=False, device=device)  # gate
        self.w3 = nn.Linear(args.dim, args.ffn_dim, bias=False, device=device)  # up
        self.w2 = nn.Linear(args.ffn_dim, args.dim, bias=False, device=device)  # down
        self.w13: nn.Module | None = None  # w1, w3 side by side, once fused (fuse)

    def fuse(self, w13: nn.Module) -> None:
        """Compute gate and up with one layer (a 4-bit loader: one kernel call instead of two)."""
        del self.w1, self.w3
        self.w13 = w13

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, D] -> SwiGLU -> [B, T, D]
        if self.w13 is None:
            gate, up = self.w1(x), self.w3(x)
        else:
            gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer: int, device: Device = None) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps, device)
        self.attention = Attention(args, layer, device)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps, device)
        self.feed_forward = FeedForward(args, device)

    def forward(
        self,
        x: torch.Tensor,
        rot: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        start: int,
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rot, mask, cache, start)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, device: Device = None) -> None:
        # device="meta" builds the skeleton without memory; loaders then assign real weights
        super().__init__()
        self.args = args
        # a 4-bit placement swaps in a Q8_0 table with the same lookup (engine/quantized.py)
        if device is not None and torch.device(device).type == "meta":
            # skip nn.Embedding's normal_ init: on meta tensors it imports torch._dynamo (~1.5 s)
            table = torch.empty(args.vocab_size, args.dim, device=device)
            self.tok_embeddings = nn.Embedding.from_pretrained(table, freeze=False)
        else:
            self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim, device=device)
        self.layers = nn.ModuleList(Block(args, i, device) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps, device)
        # None: tied to tok_embeddings. A 4-bit placement puts a QuantizedHead here (approximate
        # logits on the int4 kernel, exact rows kept beside them; engine/quantized.py)
        self.output: nn.Linear | QuantizedHead | None = (
            None
            if args.tie_embeddings
            else nn.Linear(args.dim, args.vocab_size, bias=False, device=device)
        )
        self.rope = torch.empty(0)  # [S, Dh/2] complex: row p rotates position p (init_rope)
        # generate.token_logits compiled for one-token steps, once built (engine/compiled.py),
        # why its build failed, or that none was built and none is building (a one-reply
        # process, `ask`, found no package): the reply's metrics say which
        self.decode_step: Callable[..., torch.Tensor] | None = None
        # the same for a speculative draft's VERIFY_TOKENS tokens (engine/speculative.py)
        self.verify_step: Callable[..., torch.Tensor] | None = None
        self.decode_step_error: str | None = None
        self.decode_step_unbuilt = False

    def init_rope(
        self, max_len: int, device: torch.device | str, freq_factors: torch.Tensor | None = None
    ) -> None:
        """Precompute rotary tables for positions 0..max_len-1 (once, after loading weights)."""
        self.rope = rope_table(rope_inv_freq(self.args, freq_factors), max_len, device)

    def forward(
        self,
        tokens: torch.Tensor,
        start: int = 0,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        # tokens: [B, T] at positions start..start+T-1 -> logits [B, T, V] ([B, 1, V] if last_only)
        return self.head(self.hidden(tokens, start, cache, last_only))

    def hidden(
        self,
        tokens: torch.Tensor,
        start: int = 0,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        # tokens: [B, T] at positions start..start+T-1 -> h: [B, T, D] after the final norm
        B, T = tokens.shape
        if start + T > self.rope.shape[0]:
            raise ValueError(
                f"positions up to {start + T} exceed rope tables ({self.rope.shape[0]})"
            )
        rot = self.rope[start : start + T, None]  # [T, 1, Dh/2]: one rotation for all heads
        h = self.tok_embeddings(tokens)
        mask = None
        if T > ROW_BY_ROW or (T > 1 and cache is None):  # Attention's branch that takes a mask
            mask = self.attention_mask(T, start if cache is not None else 0, h.dtype, h.device)
        for layer in self.layers:
            h = layer(h, rot, mask, cache, start)
        if last_only:
            h = h[:, -1:]
        return self.norm(h)

    def attention_mask(
        self, T: int, cached: int, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """The causal mask of T new positions after ``cached`` ones, added to the attention
        scores: [n_rep * T, cached + T], 0 where a query row may attend and -inf where not,
        repeated for the n_rep query heads that share a KV head (Attention's grouped rows).
        Built once per forward in the activations' dtype: a boolean mask was repeated and
        turned into this by SDPA in every layer (0.23 s of a 2,048-token prefill here)."""
        q_pos = torch.arange(cached, cached + T, device=device)
        k_pos = torch.arange(0, cached + T, device=device)
        allowed = k_pos[None, :] <= q_pos[:, None]  # [T, S]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allowed, float("-inf"))
        return mask.repeat(self.args.n_heads // self.args.n_kv_heads, 1)

    @property
    def head_weight(self) -> torch.Tensor:
        # [V, D]: the output projection, or the embedding table when they are tied (dense heads)
        if isinstance(self.output, nn.Linear):
            return self.output.weight
        return self.tok_embeddings.weight

    def head(self, h: torch.Tensor) -> torch.Tensor:
        # h: [B, T, D] -> logits [B, T, V] float32, computed in the head's dtype
        if isinstance(self.output, QuantizedHead):
            return self.output(h)
        weight = self.head_weight
        return F.linear(h.to(weight.dtype), weight).float()

    @property
    def head_is_float32(self) -> bool:
        if isinstance(self.output, QuantizedHead):
            return False
        return self.head_weight.dtype == torch.float32

    def head_rows(self, ids: torch.Tensor) -> torch.Tensor:
        # ids: [...] -> the head's rows [..., D] in float32, to recompute chosen logits exactly
        if isinstance(self.output, QuantizedHead):
            return self.output.rows(ids)
        return self.head_weight[ids].float()
