"""4-bit GGUF blocks run on torch's int4 CPU kernel: same function as the dequantized weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as Q
from gguf import quants

from engine import quantized
from engine.chat_format import Message, encode_dialog
from engine.dense_prefill import dense_layers
from engine.generate import decode_one_token, prefill, token_logits
from engine.kv_cache import KVCache
from engine.loaders import LoadedModel, load_model
from engine.loaders.dequant import dequantize
from engine.loaders.gguf_file import GGUFFile
from engine.placement import Placement
from engine.quantized import (
    PACK_BLOCK,
    DenseScratch,
    Int4Linear,
    Q8Table,
    QuantizedHead,
    dequantize_t,
    int4_cpu_supported,
    int4_groups_from_gguf,
    int4_linear_from_dense,
    int4_linear_from_gguf,
    pack_layout_known,
    q8_table,
    q8_table_from_gguf,
)
from engine.sampling import refine_top_logits
from tests.engine.test_dequant import random_blocks
from tests.gguf_writer import write_tiny_gguf

pytestmark = pytest.mark.skipif(not int4_cpu_supported(), reason="torch without int4 CPU kernels")
CPU = torch.device("cpu")


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_int4_linear_computes_the_dequantized_product(qtype: Q) -> None:
    raw = random_blocks(qtype, 48, 128, seed=3)
    dense = dequantize(raw, qtype, (48, 128))
    linear = int4_linear_from_gguf(raw, qtype, (48, 128))
    x = torch.randn(5, 128)
    ref = x.bfloat16().float() @ dense.t()
    out = linear(x)
    assert out.shape == (5, 48) and out.dtype == torch.float32
    # bf16 activations and bf16 scales: relative error of a few 1e-3 of the output scale
    assert (out - ref).abs().max() <= 2e-2 * ref.abs().max()
    # it is not an accident of scale: a different weight gives a clearly different product
    other = dequantize(random_blocks(qtype, 48, 128, seed=4), qtype, (48, 128))
    assert (x @ other.t() - ref).abs().max() > 0.2 * ref.abs().max()


@pytest.mark.slow
def test_default_model_runs_4bit_and_agrees_with_float32(
    default_path: Path, default_model: LoadedModel
) -> None:
    packed = load_model(
        default_path, placement=Placement(CPU, torch.bfloat16, native_4bit=True), context_length=256
    )
    assert packed.weights.startswith("4-bit int4 kernel (210 tensors), 4-bit head")
    assert packed.dtype == torch.float32  # activations and KV cache
    n_int4 = sum(isinstance(m, Int4Linear) for m in packed.model.modules())
    assert packed.packed_4bit == 210  # every Q4_1 projection of the 30 blocks ...
    assert n_int4 == 30 * 4 + 1  # ... in 4 kernels a block (wq|wk|wv, wo, w1|w3, w2), + the head
    assert default_model.chat_template is not None
    ids = encode_dialog(
        default_model.tokenizer,
        default_model.chat_template,
        [Message("user", "What is the capital of France?")],
    )
    with torch.inference_mode():
        a = token_logits(packed.model, torch.tensor([ids]))[0, -1]
        b = token_logits(default_model.model, torch.tensor([ids]))[0, -1]
    # the top two tokens here are 0.08 apart in float32: the 4-bit path keeps their order
    assert a.topk(2).indices.tolist() == b.topk(2).indices.tolist()
    top = a.topk(64).indices  # recomputed from the exact rows; the tail is the 4-bit head's
    assert (a[top] - b[top]).abs().max() < 1.0
    assert (a - b).abs().max() < 4.0
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.995


def test_refine_top_logits_breaks_bfloat16_ties_in_float32() -> None:
    weight = torch.tensor([[1.0, 0.0], [1.0, 0.002], [0.0, 0.5]])  # rows 0 and 1: 25 vs 25.05
    h = torch.tensor([[[25.0, 25.0]]])
    coarse = F.linear(h.bfloat16(), weight.bfloat16()).float()
    assert coarse[0, 0, 0] == coarse[0, 0, 1]  # a bfloat16 tie
    refine_top_logits(coarse, h, lambda ids: weight.bfloat16()[ids].float())
    assert int(coarse[0, 0].argmax()) == 1


def test_float32_keeps_dense_weights(tiny_gguf: Path) -> None:
    m = load_model(
        tiny_gguf, placement=Placement(CPU, torch.float32, native_4bit=True), context_length=64
    )
    assert not any(isinstance(x, Int4Linear) for x in m.model.modules())
    assert m.weights == "float32"


def test_q8_table_rows_equal_the_dequantized_table() -> None:
    raw = random_blocks(Q.Q8_0, 40, 128, seed=1)
    table = q8_table_from_gguf(raw, (40, 128))
    ids = torch.tensor([[3, 0, 39], [7, 7, 1]])
    assert torch.equal(table(ids), dequantize(raw, Q.Q8_0, (40, 128))[ids])  # bit for bit
    assert table.qs.dtype == torch.int8 and table.d.dtype == torch.float16


def test_q8_table_requantizes_llama_cpp_blocks_to_the_same_blocks() -> None:
    raw = quants.quantize(torch.randn(16, 64).numpy(), Q.Q8_0)
    made, read = q8_table(dequantize(raw, Q.Q8_0, (16, 64))), q8_table_from_gguf(raw, (16, 64))
    assert torch.equal(made.qs, read.qs) and torch.equal(made.d, read.d)


def test_int4_linear_from_dense_is_within_half_a_step_of_the_weights() -> None:
    w = torch.randn(48, 128)
    lin = int4_linear_from_dense(w)
    seen = lin(torch.eye(128)).t()  # [48, 128]: the kernel's weights, rounded to bfloat16
    groups = w.reshape(48, 4, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / 15  # [48, 4]
    err = (seen - w).abs().reshape(48, 4, 32)
    assert (err <= step[..., None] * 0.5 + 0.02 * w.abs().max()).all()  # + bf16 roundings
    assert err.mean() > 0  # it is 4-bit: not the same weights


def test_requantizing_in_chunks_packs_what_one_pass_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.randn(3 * PACK_BLOCK + 16, 64)  # chunks of whole pack blocks, then a short tail
    whole = int4_linear_from_dense(w)
    monkeypatch.setattr(quantized, "CHUNK_ROWS", PACK_BLOCK)
    chunked = int4_linear_from_dense(w)
    assert torch.equal(chunked.packed, whole.packed)
    assert torch.equal(chunked.scales_zeros, whole.scales_zeros)
    x = torch.randn(3, 64)
    assert torch.equal(chunked(x), whole(x))


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny_q4_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama as llama.cpp quantizes it: Q4_1 projections, Q8_0 embedding and head."""
    tied = request.param
    path = tmp_path_factory.mktemp("q4") / f"tiny-q4-{'tied' if tied else 'untied'}.gguf"
    return write_tiny_gguf(path, tied=tied, quantize=Q.Q4_1, quantize_tables=Q.Q8_0)


def test_4bit_head_and_q8_embedding_from_the_file(tiny_q4_path: Path) -> None:
    dense = load_model(tiny_q4_path, placement=Placement(CPU, torch.float32), context_length=64)
    m = load_model(
        tiny_q4_path, placement=Placement(CPU, torch.bfloat16, native_4bit=True), context_length=64
    )
    model = m.model
    assert isinstance(model.tok_embeddings, Q8Table) and isinstance(model.output, QuantizedHead)
    tied = dense.model.output is None
    assert (model.output.rows is model.tok_embeddings) == tied  # tied: one table for both
    ids = torch.tensor([[5, 17, 400, 49151]])
    assert torch.equal(model.tok_embeddings(ids), dense.model.tok_embeddings(ids))
    assert torch.equal(model.head_rows(ids), dense.model.head_weight[ids])
    with torch.inference_mode():
        h = model.hidden(ids)
        logits = token_logits(model, ids)
        exact = h @ dense.model.head_weight.t()  # the float32 head on the same hidden states
        top = model.head(h).topk(64, dim=-1).indices  # the 4-bit head's top 64 ...
    # ... are recomputed from the exact rows; the rest are the 4-bit kernel's
    torch.testing.assert_close(logits.gather(-1, top), exact.gather(-1, top))
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))
    assert 0 < (logits - exact).abs().max() < 0.25 * exact.abs().max()


def test_untied_dense_head_is_kept_as_q8_rows(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "f32-head.gguf", tied=False, quantize=Q.Q4_0)
    packed = Placement(CPU, torch.bfloat16, native_4bit=True)
    m = load_model(path, placement=packed, context_length=64)
    dense = load_model(path, placement=Placement(CPU, torch.float32), context_length=64)
    head = m.model.output
    assert isinstance(head, QuantizedHead) and isinstance(head.rows, Q8Table)
    assert isinstance(m.model.tok_embeddings, torch.nn.Embedding)  # float32 in the file: kept
    rows, exact = m.model.head_rows(torch.arange(300)), dense.model.head_weight[:300]
    assert (rows - exact).abs().max() <= exact.abs().max() / 127  # within a Q8_0 step


TEACHER_TEXTS = (  # 3 x 64 teacher-forced positions (each text is at least 65 tokens)
    "The history of the Roman Empire spans many centuries. It began when Augustus became the "
    "first emperor in 27 BC, and in the west it ended in 476 AD, when the last emperor was "
    "deposed. The eastern half, often called the Byzantine Empire, lasted until the fall of "
    "Constantinople in 1453, nearly a thousand years later.",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n'
    "        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n\n"
    'if __name__ == "__main__":\n    for i in range(10):\n        print(i, fibonacci(i))\n',
    "Photosynthesis is the process by which green plants, algae and some bacteria use the energy "
    "of sunlight to turn water and carbon dioxide into glucose and oxygen. It takes place mainly "
    "in the leaves, inside small structures called chloroplasts, which contain the green pigment "
    "chlorophyll. The oxygen that the plants release is the oxygen that most living things on "
    "Earth breathe.",
)


@pytest.mark.slow
def test_default_model_4bit_head_agrees_with_float32_teacher_forced(
    default_path: Path, default_model: LoadedModel
) -> None:
    """Measured: the 4-bit head (top 64 refined) picks the float32 head's top-1 at 192 of 192
    positions on the same hidden states; the whole 4-bit model agrees with the float32 model
    at 191 of 192. Memory: head and embedding in 1.69 bytes a weight (were 6: float32 table and
    a bfloat16 head copy)."""
    packed = load_model(
        default_path, placement=Placement(CPU, torch.bfloat16, native_4bit=True), context_length=256
    )
    model, ref = packed.model, default_model.model
    same_head = whole = 0
    with torch.inference_mode():
        for text in TEACHER_TEXTS:
            ids = torch.tensor([default_model.tokenizer.encode(text)[:65]])
            assert ids.shape[1] == 65
            h = model.hidden(ids)
            top1 = token_logits(model, ids)[0, -64:].argmax(-1)
            same_head += int((top1 == (h @ ref.head_weight.t())[0, -64:].argmax(-1)).sum())
            whole += int((top1 == token_logits(ref, ids)[0, -64:].argmax(-1)).sum())
    assert same_head / 192 >= 0.98 and whole / 192 >= 0.98
    table_bytes = sum(b.numel() * b.element_size() for b in model.output.buffers())
    v, d = ref.head_weight.shape
    assert table_bytes < 1.7 * v * d


def unfused_from_file(model: torch.nn.Module, path: Path) -> None:
    """Put each block's wq, wk, wv, w1, w3 back as their own Int4Linear, read from the file."""
    gguf = GGUFFile(path)

    def part(name: str) -> Int4Linear:
        info = gguf.tensors[name]
        return int4_linear_from_gguf(gguf.raw(name), info.ggml_type, info.shape)

    for i, block in enumerate(model.layers):
        att, ff = block.attention, block.feed_forward
        att.wq, att.wk, att.wv = (part(f"blk.{i}.attn_{p}.weight") for p in "qkv")
        ff.w1, ff.w3 = part(f"blk.{i}.ffn_gate.weight"), part(f"blk.{i}.ffn_up.weight")
        att.wqkv = ff.w13 = None


def test_fused_projections_compute_each_part_bit_for_bit(tiny_q4_path: Path) -> None:
    packed = Placement(CPU, torch.bfloat16, native_4bit=True)
    fused = load_model(tiny_q4_path, placement=packed, context_length=64).model
    apart = load_model(tiny_q4_path, placement=packed, context_length=64).model
    unfused_from_file(apart, tiny_q4_path)
    att, ff = fused.layers[1].attention, fused.layers[1].feed_forward
    assert isinstance(att.wqkv, Int4Linear) and isinstance(ff.w13, Int4Linear)
    assert not hasattr(att, "wq") and not hasattr(ff, "w1")  # replaced, not kept beside
    x = torch.randn(2, 5, 64)
    q, k, v = att.wqkv(x).split(att.qkv_sizes, dim=-1)
    ref = apart.layers[1].attention
    assert torch.equal(q, ref.wq(x)) and torch.equal(k, ref.wk(x)) and torch.equal(v, ref.wv(x))
    gate, up = ff.w13(x).chunk(2, dim=-1)
    ref_ff = apart.layers[1].feed_forward
    assert torch.equal(gate, ref_ff.w1(x)) and torch.equal(up, ref_ff.w3(x))
    tokens = torch.randint(0, 49152, (1, 7))
    with torch.inference_mode():
        assert torch.equal(fused(tokens), apart(tokens))


@pytest.mark.slow
def test_default_model_fused_decodes_the_same_greedy_tokens(default_path: Path) -> None:
    packed = Placement(CPU, torch.bfloat16, native_4bit=True)
    fused = load_model(default_path, placement=packed, context_length=256)
    apart = load_model(default_path, placement=packed, context_length=256)
    unfused_from_file(apart.model, default_path)
    assert fused.chat_template is not None
    ids = encode_dialog(
        fused.tokenizer, fused.chat_template, [Message("user", "Write a short poem about the sea.")]
    )
    replies = []
    for m in (fused, apart):
        a = m.args
        cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 256)
        logits = [prefill(m.model, cache, ids, 0)]
        tokens = [int(logits[-1].argmax())]
        for _ in range(47):
            logits.append(decode_one_token(m.model, cache, tokens[-1]))
            tokens.append(int(logits[-1].argmax()))
        replies.append((tokens, torch.stack(logits)))
    assert replies[0][0] == replies[1][0]
    assert torch.equal(replies[0][1], replies[1][1])  # not only the tokens: the same logits


def test_dequantize_t_reads_the_kernels_pack_layout() -> None:
    assert pack_layout_known()
    raw = random_blocks(Q.Q4_1, 192, 96, seed=5)
    lin = int4_linear_from_gguf(raw, Q.Q4_1, (192, 96))
    weight_t = dequantize_t(
        lin.packed, lin.scales_zeros, torch.empty(96, 192, dtype=torch.bfloat16)
    )
    kernel = lin(torch.eye(96, dtype=torch.bfloat16))  # [96, 192]: row k = W[:, k], rounded
    assert (weight_t.float() - kernel.float()).abs().max() <= kernel.abs().max() / 128


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dequantize_t_is_the_kernels_formula_rounded_once(seed: int) -> None:
    raw = random_blocks(Q.Q4_1, 192, 96, seed=seed)
    lin = int4_linear_from_gguf(raw, Q.Q4_1, (192, 96))
    q, _, _ = int4_groups_from_gguf(raw, Q.Q4_1, (192, 96))
    weight_t = dequantize_t(
        lin.packed, lin.scales_zeros, torch.empty(96, 192, dtype=torch.bfloat16)
    )
    scale, zero = lin.scales_zeros.float().repeat_interleave(32, dim=0).unbind(-1)  # [in, out]
    exact = (q.t().float() - 8.0) * scale + zero  # float32, as the kernel computes it
    assert torch.equal(weight_t, exact.bfloat16())


@pytest.mark.slow
def test_default_model_dense_prefill_agrees_teacher_forced(default_path: Path) -> None:
    """Measured: dense bfloat16 prefill (weights rounded to bfloat16 once) picks the int4
    kernel's top-1 at 192 of 192 positions here (190 of 192 on README text; largest logit
    gap there about 1.4). The dense path is forced on, whatever this machine measured for it
    (engine/dense_prefill.py): where it does not win it is slow, not wrong."""
    m = load_model(
        default_path, placement=Placement(CPU, torch.bfloat16, native_4bit=True), context_length=512
    )
    layers = list(dense_layers(m.model).values())
    assert len(layers) == 30 * 4  # every block projection; the head stays on the kernel
    scratch = DenseScratch(1)
    ids = m.tokenizer.encode(" ".join(TEACHER_TEXTS * 5))
    assert len(ids) >= 3 * 300
    agree = 0
    with torch.inference_mode():
        for i in range(3):
            tokens = torch.tensor([ids[i * 300 : i * 300 + 256]])
            dense = token_logits(m.model, tokens)[0, -64:].argmax(-1)
            for x in layers:
                x.scratch = None
            kernel = token_logits(m.model, tokens)[0, -64:].argmax(-1)
            for x in layers:
                x.scratch = scratch
            agree += int((dense == kernel).sum())
    assert agree / 192 >= 0.98
