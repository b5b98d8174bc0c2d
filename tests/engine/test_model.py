"""Layer tests in the spirit of "build it from the paper", on random tiny weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.args import ModelArgs, RopeScaling
from engine.kv_cache import KVCache
from engine.model import ROW_BY_ROW, RMSNorm, Transformer
from engine.rope import rope_inv_freq, rope_table, rotate


def tiny_args(**kw: object) -> ModelArgs:
    base: dict[str, object] = dict(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=101,
        ffn_dim=96,
        rope_theta=10000.0,
        max_seq_len=128,
    )
    base.update(kw)
    return ModelArgs(**base)  # type: ignore[arg-type]


def random_model(args: ModelArgs, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    model.init_rope(args.max_seq_len, "cpu")
    return model.eval()


def test_rmsnorm_matches_the_paper_formula() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 5, 8)
    rms = torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), x / rms * norm.weight)
    # invariant to scaling the input
    torch.testing.assert_close(norm(7.0 * x), norm(x), rtol=1e-5, atol=1e-5)


def test_rope_matches_complex_rotation_and_is_relative() -> None:
    args = tiny_args()
    rot = rope_table(rope_inv_freq(args), 64, "cpu")[:, None]  # [T, 1, Dh/2]
    torch.manual_seed(1)
    q = torch.randn(1, 64, 1, 16)  # [B, T, H, Dh]
    out = rotate(q, rot)
    # Meta's formulation: pairs as complex numbers times e^{i * pos * theta_j}
    inv = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    angles = torch.outer(torch.arange(64).float(), inv)
    qc = torch.view_as_complex(q.float().reshape(1, 64, 1, 8, 2))
    ref = torch.view_as_real(qc * torch.polar(torch.ones_like(angles), angles)[None, :, None])
    torch.testing.assert_close(out, ref.flatten(-2), rtol=1e-5, atol=1e-5)
    # norms are preserved and the score depends only on the distance m - n
    torch.testing.assert_close(out.norm(dim=-1), q.norm(dim=-1), rtol=1e-5, atol=1e-5)
    k = torch.randn(16)
    kk = rotate(k.expand(1, 64, 1, 16).contiguous(), rot)
    qq = rotate(q[:, :1].expand(1, 64, 1, 16).contiguous(), rot)
    s1 = (qq[0, 10, 0] * kk[0, 3, 0]).sum()
    s2 = (qq[0, 40, 0] * kk[0, 33, 0]).sum()
    torch.testing.assert_close(s1, s2, rtol=1e-4, atol=1e-4)


def test_llama31_rope_scaling_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    ours = rope_inv_freq(tiny_args(rope_theta=500000.0, rope_scaling=RopeScaling()))
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("B", "T", "dim", "heads", "kv"),
    [
        (1, 1, 64, 4, 4),
        (2, 7, 64, 4, 2),
        (3, 16, 96, 6, 2),
        (1, 33, 128, 8, 1),
    ],
)
def test_shapes_and_batch_independence(B: int, T: int, dim: int, heads: int, kv: int) -> None:
    model = random_model(tiny_args(dim=dim, n_heads=heads, n_kv_heads=kv))
    tokens = torch.randint(0, 101, (B, T))
    with torch.inference_mode():
        logits = model(tokens)
        assert logits.shape == (B, T, 101)
        assert model(tokens, last_only=True).shape == (B, 1, 101)
        for b in range(B):  # each row of a batch equals running it alone
            torch.testing.assert_close(logits[b], model(tokens[b : b + 1])[0], rtol=1e-4, atol=1e-5)


def test_attention_is_causal() -> None:
    model = random_model(tiny_args())
    a = torch.randint(0, 101, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 13) % 101  # change only the future
    with torch.inference_mode():
        la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :8], lb[:, :8])
    assert not torch.allclose(la[:, 8:], lb[:, 8:])


def reference_forward(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The textbook computation: K/V repeated per query head, explicit softmax attention."""
    args = model.args
    B, T = tokens.shape
    rot = model.rope[:T, None]  # [T, 1, Dh/2]
    h = model.tok_embeddings(tokens)
    causal = torch.full((T, T), float("-inf")).triu(1)
    for layer in model.layers:
        att = layer.attention
        x = layer.attention_norm(h)
        q = rotate(att.wq(x).view(B, T, args.n_heads, -1), rot).transpose(1, 2)
        k = rotate(att.wk(x).view(B, T, args.n_kv_heads, -1), rot).transpose(1, 2)
        v = att.wv(x).view(B, T, args.n_kv_heads, -1).transpose(1, 2)
        rep = args.n_heads // args.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(args.head_dim) + causal
        o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)
        h = h + att.wo(o)
        f = layer.feed_forward
        y = layer.ffn_norm(h)
        h = h + f.w2(F.silu(f.w1(y)) * f.w3(y))
    head = model.tok_embeddings.weight if model.output is None else model.output.weight
    return F.linear(model.norm(h), head)


def test_grouped_query_attention_matches_the_textbook_computation() -> None:
    model = random_model(tiny_args(n_heads=8, n_kv_heads=2))
    tokens = torch.randint(0, 101, (2, 10))
    with torch.inference_mode():
        torch.testing.assert_close(
            model(tokens), reference_forward(model, tokens), rtol=1e-4, atol=1e-5
        )


def test_a_long_chunk_after_cached_tokens_matches_the_textbook_computation() -> None:
    """More than ROW_BY_ROW new tokens after cached ones: one SDPA call over grouped query
    rows, under the additive mask that the forward builds once for every layer."""
    model = random_model(tiny_args(n_heads=8, n_kv_heads=2))
    args = model.args
    tokens = torch.randint(0, 101, (1, 7 + ROW_BY_ROW + 4))
    cache = KVCache(args.n_layers, args.n_kv_heads, args.head_dim, 64)
    with torch.inference_mode():
        model(tokens[:, :7], 0, cache)
        chunk = model(tokens[:, 7:], 7, cache)  # [1, ROW_BY_ROW + 4, V]
        whole = reference_forward(model, tokens)
    torch.testing.assert_close(chunk, whole[:, 7:], rtol=1e-4, atol=1e-5)


def test_the_attention_mask_is_causal_after_the_cache_for_each_grouped_row() -> None:
    model = random_model(tiny_args(n_heads=4, n_kv_heads=2))  # 2 query heads per KV head
    mask = model.attention_mask(3, 2, torch.float32, torch.device("cpu"))
    inf = float("-inf")
    one_head = torch.tensor(
        [[0.0, 0.0, 0.0, inf, inf], [0.0, 0.0, 0.0, 0.0, inf], [0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    assert torch.equal(mask, torch.cat([one_head, one_head]))  # [n_rep * T, cached + T]
    assert model.attention_mask(3, 0, torch.bfloat16, torch.device("cpu")).dtype == torch.bfloat16


def test_untied_output_head_is_used() -> None:
    args = tiny_args(tie_embeddings=False)
    model = random_model(args)
    assert model.output is not None
    tokens = torch.randint(0, 101, (1, 5))
    with torch.inference_mode():
        before = model(tokens)
        model.output.weight.mul_(2.0)
        torch.testing.assert_close(model(tokens), 2.0 * before, rtol=1e-5, atol=1e-5)
