"""GGUF -> Transformer: a name map from llama.cpp's tensor names into ours.

llama.cpp's converter stores q/k projection rows in Meta's interleaved rotary layout, which is
the layout engine/model.py uses, so no permutation is needed here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from engine.args import ModelArgs
from engine.dense_prefill import share_scratch
from engine.errors import ModelLoadError
from engine.ggml import GGMLType as Q
from engine.heap import trim_heap
from engine.loaders.dequant import SUPPORTED, dequantize
from engine.loaders.gguf_file import GGUFFile
from engine.loaders.state import check_complete, install, map_name
from engine.model import Attention, FeedForward, Transformer
from engine.placement import Placement, Placer
from engine.quantized import (
    INT4_TYPES,
    Groups,
    Int4Linear,
    QuantizedHead,
    fused_int4_linear,
    int4_cpu_supported,
    int4_groups_from_gguf,
    int4_head_supported,
    int4_linear_from_rows,
    q8_table,
    q8_table_from_gguf,
)

TOP_LEVEL = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
PER_LAYER = {
    "attn_norm": "attention_norm",
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1",
    "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3",
}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
TABLES = {"tok_embeddings.weight", "output.weight"}  # kept in Q8_0 beside 4-bit blocks
IGNORED = {"rope_freqs.weight"}  # read separately: Llama 3.1 rope frequency factors

Progress = Callable[[int, int], None]  # (tensors done, tensors total)


def internal_name(gguf_name: str) -> str | None:
    return map_name(gguf_name, TOP_LEVEL, _LAYER_NAME, PER_LAYER)


def load_gguf_weights(
    gguf: GGUFFile,
    *,
    placement: Placement,
    progress: Progress | None = None,
) -> tuple[Transformer, ModelArgs, torch.Tensor | None, int]:
    """Build the model on the meta device and place each dequantized tensor, once.

    With ``placement.native_4bit`` (bfloat16 on CPU only), Q4_0/Q4_1 projection weights stay
    4-bit and run on torch's int4 kernel (engine/quantized.py), Q8_0 embedding and head tables
    stay Q8_0, the head runs on the int4 kernel too (``quantized_head``), and wq|wk|wv and
    w1|w3 are fused (``FUSED``). Returns the model, its args, Llama 3.1 rope frequency factors
    (if the file has them) and how many of the file's tensors were kept 4-bit.
    """
    keep_4bit = (
        placement.native_4bit
        and placement.dtype == torch.bfloat16
        and placement.device.type == "cpu"
        and has_int4_blocks(gguf)
    )
    src = gguf.path.name
    args = gguf_model_args(gguf)
    model = Transformer(args, device="meta")
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    placer = Placer(placement, args)
    placed: dict[str, torch.Tensor | torch.nn.Module] = {}
    four_bit = {  # projections kept 4-bit, and those of them fused side by side
        t
        for n, i in gguf.tensors.items()
        if keep_4bit
        and i.ggml_type in INT4_TYPES
        and (t := internal_name(n)) in expected
        and t.startswith("layers.")
    }
    fusions = fusion_groups(four_bit)
    pending: dict[str, Groups] = {}
    fused: dict[str, Int4Linear] = {}
    total = len(gguf.tensors)
    for done, (name, info) in enumerate(gguf.tensors.items(), 1):
        if name in IGNORED:
            continue
        target = internal_name(name)
        if target is None or target not in expected:
            raise ModelLoadError(f"{src}: unexpected tensor {name}; is this a Llama-family model?")
        if info.ggml_type not in SUPPORTED:
            raise ModelLoadError(
                f"{src}: tensor {name} uses quantization {info.ggml_type.name}, which llama-tui "
                f"cannot load yet; use a file quantized as one of "
                f"{', '.join(sorted(t.name for t in SUPPORTED))}"
            )
        if info.shape != expected[target]:
            raise ModelLoadError(
                f"{src}: tensor {name} has shape {list(info.shape)}, expected "
                f"{list(expected[target])} from the metadata; the file is inconsistent"
            )
        if keep_4bit and target in four_bit:
            groups = int4_groups_from_gguf(gguf.raw(name), info.ggml_type, info.shape)
            if target in fusions:  # held until its group is complete
                fused_name, parts = fusions[target]
                pending[target] = groups
                if all(p in pending for p in parts):
                    fused[fused_name] = fused_int4_linear([pending.pop(p) for p in parts])
            else:
                placed[target] = fused_int4_linear([groups])
        elif keep_4bit and info.ggml_type == Q.Q8_0 and target in TABLES:
            placed[target] = q8_table_from_gguf(gguf.raw(name), info.shape)
        elif keep_4bit:
            # with 4-bit projections the small rest (norms, embeddings) stays float32, and so
            # does the residual stream: only the big matmuls run in bfloat16
            placed[target] = dequantize(gguf.raw(name), info.ggml_type, info.shape).float()
        else:
            placed[target] = placer.put(
                target, dequantize(gguf.raw(name), info.ggml_type, info.shape)
            )
        gguf.release(name)
        trim_heap()  # the tensor's temporaries: freed, now given back (engine/heap.py)
        if progress is not None:
            progress(done, total)
    check_complete(expected, [*placed, *fusions], src)
    head = placed.pop("output.weight", None) if keep_4bit else None
    model = install(model, placed, placer)
    for name, layer in fused.items():
        owner = model.get_submodule(name.rpartition(".")[0])
        assert isinstance(owner, Attention | FeedForward)
        owner.fuse(layer)
    if keep_4bit:
        model.output = quantized_head(model.tok_embeddings if head is None else head, args)
        share_scratch(model)  # long prefill chunks: dense bfloat16 GEMMs, one layer at a time
    n_4bit = len(four_bit)
    return model, args, rope_freq_factors(gguf), n_4bit


def has_int4_blocks(gguf: GGUFFile) -> bool:
    """Block weights in Q4_0/Q4_1 and a torch with the int4 CPU kernel to run them."""
    blocks = (i for n, i in gguf.tensors.items() if n.startswith("blk."))
    return int4_cpu_supported() and any(i.ggml_type in INT4_TYPES for i in blocks)


def gguf_model_args(gguf: GGUFFile) -> ModelArgs:
    has_output = "output.weight" in gguf.tensors
    return ModelArgs.from_gguf(gguf.metadata, has_output=has_output, source=gguf.path.name)


def rope_freq_factors(gguf: GGUFFile) -> torch.Tensor | None:
    """Llama 3.1 rope frequency factors, if the file has them (llama.cpp's rope_freqs)."""
    info = gguf.tensors.get("rope_freqs.weight")
    if info is None:
        return None
    return dequantize(gguf.raw(info.name), info.ggml_type, info.shape)


FUSED = {  # 4-bit projections computed side by side: one kernel call (model.py fuse)
    "attention.wqkv": ("attention.wq", "attention.wk", "attention.wv"),
    "feed_forward.w13": ("feed_forward.w1", "feed_forward.w3"),
}


def fusion_groups(four_bit: set[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Weight name -> (fused layer, its parts' weight names), for groups whose parts are all
    4-bit: "layers.3.attention.wk.weight" -> ("layers.3.attention.wqkv", (wq, wk, wv))."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for block in {".".join(name.split(".")[:2]) for name in four_bit}:  # "layers.3"
        for fused, parts in FUSED.items():
            names = tuple(f"{block}.{p}.weight" for p in parts)
            if all(n in four_bit for n in names):
                out.update(dict.fromkeys(names, (f"{block}.{fused}", names)))
    return out


def quantized_head(
    table: torch.Tensor | torch.nn.Module, args: ModelArgs
) -> QuantizedHead | torch.nn.Linear:
    """The output head beside 4-bit blocks: it reads V x D weights per token, so it runs on the
    int4 kernel too, and keeps exact rows for the top logits. ``table`` is the embedding module
    (tied) or the file's head: Q8_0 blocks (a Q8Table), or a dense float32 tensor, whose rows
    are then kept requantized to Q8_0 (1.06 bytes a weight; the bfloat16 rows used before took
    2). A shape the kernel cannot pack keeps a bfloat16 head."""

    def rows(start: int, end: int) -> torch.Tensor:
        if isinstance(table, torch.Tensor):
            return table[start:end]
        return table(torch.arange(start, end))

    if not int4_head_supported(args.vocab_size, args.dim):
        linear = torch.nn.Linear(args.dim, args.vocab_size, bias=False, device="meta")
        dense = rows(0, args.vocab_size).to(torch.bfloat16)
        linear.weight = torch.nn.Parameter(dense, requires_grad=False)
        return linear
    exact = q8_table(table) if isinstance(table, torch.Tensor) else table
    return QuantizedHead(int4_linear_from_rows(rows, args.vocab_size, args.dim), exact)


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False
