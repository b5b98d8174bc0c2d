"""`llama-tui bench --shape 7b`: the placement table (GPU, CPU, int8, NF4, offload variants).

A model of real Llama dimensions with random weights (no download) is built straight into each
placement, one mode per fresh subprocess (``python -m tui.bench.placement MODE``), so VRAM and
RSS figures belong to that mode alone. Each mode reports decode and prefill tokens/s, VRAM,
RSS and, for offload, the bytes copied per token and the time spent waiting on copies, next to
its physical limit: HBM (or DRAM) bandwidth over the bytes read per token for resident weights,
PCIe bandwidth over the bytes copied per token for offloaded ones. Both bandwidths are measured
in the worker with plain copies, not taken from a data sheet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from tui.bench.common import WorkerFailed, median_figures, run_worker, sync, timed_runs

SHAPES: dict[str, dict[str, int]] = {  # published Llama dimensions
    "7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000, ffn_dim=11008),
    "13b": dict(dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, vocab_size=32000, ffn_dim=13824),
    "1b": dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000, ffn_dim=5632),
    "135m": dict(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, ffn_dim=1536),
    "tiny": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=512, ffn_dim=512),
}
PROMPT_TOKENS = 128  # unless --prompt-tokens
ATTENTION = ("wq", "wk", "wv", "wo", "attention_norm")
FEED_FORWARD = ("w1", "w2", "w3", "ffn_norm")


@dataclass(frozen=True)
class Mode:
    device: str  # "cuda" | "cpu"
    dtype: str
    quantization: str = "none"
    offload: bool = False
    exclusion: tuple[str, ...] = ()  # kept resident with offload
    peer: bool = False  # transformers' LlamaForCausalLM (eager, its default cache) instead


# the seed's columns: GPU, CPU, 8bit, Off_ALL, Off_FF (feed-forward streamed, attention
# resident), Off_ATT (attention streamed, feed-forward resident); plus NF4 and CPU bf16
MODES = {
    "gpu": Mode("cuda", "float16"),
    "int8": Mode("cuda", "float16", "int8"),
    "nf4": Mode("cuda", "float16", "nf4"),
    "off_all": Mode("cuda", "float16", offload=True),
    "off_ff": Mode("cuda", "float16", offload=True, exclusion=ATTENTION),
    "off_att": Mode("cuda", "float16", offload=True, exclusion=FEED_FORWARD),
    "off_att_int8": Mode("cuda", "float16", "int8", offload=True, exclusion=FEED_FORWARD),
    "hf_gpu": Mode("cuda", "float16", peer=True),
    "cpu": Mode("cpu", "float32"),
    "hf_cpu": Mode("cpu", "float32", peer=True),
    "cpu_bf16": Mode("cpu", "bfloat16"),
    "cpu_int8": Mode("cpu", "float32", "int8"),
    "cpu_nf4": Mode("cpu", "float32", "nf4"),
}
GPU_MODES = ("gpu", "hf_gpu", "int8", "nf4", "off_all", "off_ff", "off_att", "off_att_int8")
CPU_MODES = ("cpu", "hf_cpu", "cpu_bf16", "cpu_int8", "cpu_nf4")


# --- worker ------------------------------------------------------------------------------


def _bandwidths(device: Any) -> dict[str, float]:
    """Measured GB/s: device memory (bytes read + written by a large copy) and, on CUDA,
    host->device from pinned memory."""
    import torch

    n = 1 << 28 if device.type == "cuda" else 1 << 26  # 512 MiB / 128 MiB of fp16
    a = torch.empty(n, dtype=torch.float16, device=device)
    b = torch.empty_like(a)
    out: dict[str, float] = {}

    def timed(fn: Any, reps: int = 5) -> float:
        fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        return (time.perf_counter() - t0) / reps

    out["memory_gb_s"] = 2 * a.nbytes / timed(lambda: b.copy_(a)) / 1e9
    if device.type == "cuda":
        host = torch.empty(n, dtype=torch.float16, pin_memory=True)
        out["pcie_gb_s"] = a.nbytes / timed(lambda: a.copy_(host, non_blocking=True)) / 1e9
    return out


def _random_weights(args: Any, device: Any, dtype: Any, seed: int) -> Any:
    """(name, tensor) for every weight of the meta model: N(0, 0.02), norms 1."""
    import torch

    from engine import Transformer

    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in Transformer(args, device="meta").state_dict().items():
        if name.endswith("norm.weight"):
            yield name, torch.ones(p.shape, dtype=dtype, device=device)
        else:
            w = torch.randn(p.shape, generator=gen, dtype=dtype, device=device)
            yield name, w.mul_(0.02)


def _resident_read_bytes(model: Any, device: Any) -> int:
    """Bytes of weights on `device` read per decode step (the embedding table reads one row)."""
    from engine import streamer_of

    emb = model.tok_embeddings.weight
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == device.type and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
        state = getattr(t, "quant_state", None)  # NF4 block scales
        if state is not None and getattr(state, "absmax", None) is not None:
            total += state.absmax.numel() * state.absmax.element_size()
    if model.output is not None and emb.device.type == device.type:
        total -= emb.numel() * emb.element_size()
    streamer = streamer_of(model)
    if streamer is not None:  # the two slots are read once per block each, i.e. block bytes
        total -= sum(s.numel() * s.element_size() for s in streamer.slots)
        total += streamer.store.block_bytes * len(streamer.host)
    return total


def _peer_model(shape: str, device: Any, dtype: Any) -> Any:
    """transformers' Llama with the same dimensions and random weights, as a decode step."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = SHAPES[shape]
    config = LlamaConfig(
        hidden_size=d["dim"],
        num_hidden_layers=d["n_layers"],
        num_attention_heads=d["n_heads"],
        num_key_value_heads=d["n_kv_heads"],
        vocab_size=d["vocab_size"],
        intermediate_size=d["ffn_dim"],
        tie_word_embeddings=shape == "135m",
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device=device).to(dtype).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=gen)
    return model


def worker(name: str, shape: str, tokens: int, runs: int, prompt_len: int) -> dict[str, Any]:
    import torch

    from engine import (
        KVCache,
        ModelArgs,
        assign_state,
        decode_one_token,
        prefill,
        resolve_placement,
        rss_bytes,
        streamer_of,
    )

    mode = MODES[name]
    rss0 = rss_bytes()
    placement = resolve_placement(
        mode.device, mode.dtype, mode.quantization, mode.offload, mode.exclusion
    )
    device, dtype = placement.device, placement.dtype
    dims: dict[str, Any] = dict(SHAPES[shape])
    args = ModelArgs(**dims, max_seq_len=prompt_len + tokens + 8, tie_embeddings=shape == "135m")
    t0 = time.perf_counter()
    if mode.peer:
        return _peer_worker(name, shape, tokens, runs, prompt_len, device, dtype, rss0)
    model = assign_state(
        args, _random_weights(args, device, dtype, 0), placement=placement, source=shape
    )
    model.init_rope(args.max_seq_len, device)
    sync(device)
    load_s = time.perf_counter() - t0
    ids = torch.randint(
        0, args.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(1)
    )
    prompt = ids.tolist()
    cache = KVCache(
        args.n_layers, args.n_kv_heads, args.head_dim, args.max_seq_len, dtype=dtype, device=device
    )

    def one_run(n: int) -> dict[str, float]:
        cache.truncate(0)
        sync(device)
        t0 = time.perf_counter()
        logits = prefill(model, cache, prompt, 0)
        token = int(logits.argmax())
        t1 = time.perf_counter()
        s = streamer_of(model)
        copied0, wait0 = (s.bytes_copied, s.wait_s) if s else (0, 0.0)
        for _ in range(n - 1):
            token = int(decode_one_token(model, cache, token).argmax())
        t2 = time.perf_counter()
        steps = n - 1
        return {
            "prefill_tok_s": prompt_len / (t1 - t0),
            "decode_tok_s": steps / (t2 - t1),
            "offload_bytes_per_token": (s.bytes_copied - copied0) / steps if s else 0.0,
            "offload_wait_share": (s.wait_s - wait0) / (t2 - t1) if s else 0.0,
        }

    return _result(
        name,
        placement.describe(),
        device,
        load_s,
        _median_runs(one_run, tokens, runs),
        _resident_read_bytes(model, device),
        rss0,
    )


def _median_runs(one_run: Any, tokens: int, runs: int) -> dict[str, float]:
    return median_figures(timed_runs(one_run, tokens, runs, warmup=4))  # + first copies


def _result(
    name: str,
    placement: str,
    device: Any,
    load_s: float,
    figures: dict[str, float],
    read_bytes: int,
    rss0: int,
) -> dict[str, Any]:
    import torch

    from engine import peak_rss_bytes, rss_bytes

    cuda = device.type == "cuda"
    result: dict[str, Any] = {
        "mode": name,
        "placement": placement,
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "load_s": load_s,
        **figures,
        "read_bytes_per_token": read_bytes,
        "rss_bytes": rss_bytes() - rss0,
        "peak_rss_bytes": peak_rss_bytes(),
        **_bandwidths(device),
    }
    if cuda:
        result["vram_allocated_bytes"] = torch.cuda.memory_allocated()
        result["vram_peak_bytes"] = torch.cuda.max_memory_allocated()
        result["vram_reserved_bytes"] = torch.cuda.memory_reserved()
    return result


def _peer_worker(
    name: str,
    shape: str,
    tokens: int,
    runs: int,
    prompt_len: int,
    device: Any,
    dtype: Any,
    rss0: int,
) -> dict[str, Any]:
    """The same measurement for transformers: prefill, then one forward per token with its
    default (dynamic) KV cache, greedy, as generate() does without sampling."""
    import torch

    t0 = time.perf_counter()
    model = _peer_model(shape, device, dtype)
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, SHAPES[shape]["vocab_size"], (1, prompt_len), generator=gen).to(device)

    @torch.inference_mode()
    def one_run(n: int) -> dict[str, float]:
        sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        int(token)
        t1 = time.perf_counter()
        cache = out.past_key_values
        for _ in range(n - 1):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            int(token)
        t2 = time.perf_counter()
        return {
            "prefill_tok_s": prompt_len / (t1 - t0),
            "decode_tok_s": (n - 1) / (t2 - t1),
            "offload_bytes_per_token": 0.0,
            "offload_wait_share": 0.0,
        }

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.model.embed_tokens.weight
    tied = model.config.tie_word_embeddings
    read = weights - (0 if tied else emb.numel() * emb.element_size())
    figures = _median_runs(one_run, tokens, runs)
    kind = f"transformers {str(dtype).removeprefix('torch.')}"
    return _result(name, kind, device, load_s, figures, read, rss0)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} threads)"
    except OSError:
        pass
    return "CPU"


# --- parent ------------------------------------------------------------------------------


def limit_tok_s(r: dict[str, Any]) -> float:
    """The physical bound: resident bytes over memory bandwidth plus copied bytes over PCIe."""
    s = r["read_bytes_per_token"] / (r["memory_gb_s"] * 1e9)
    if r["offload_bytes_per_token"]:
        s = max(s, r["offload_bytes_per_token"] / (r["pcie_gb_s"] * 1e9))
    return 1 / s if s > 0 else 0.0


def format_table(results: list[dict[str, Any]]) -> str:
    gib = 2**30
    head = [
        "mode",
        "weights",
        "decode tok/s",
        "limit tok/s",
        "of limit",
        "prefill tok/s",
        "VRAM alloc / peak / reserved GiB",
        "peak RSS GiB",
        "copied per token GiB",
        "decode time waiting on copies",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in results:
        limit = limit_tok_s(r)
        vram = "-"
        if "vram_allocated_bytes" in r:
            vram = " / ".join(
                f"{r[k] / gib:.1f}"
                for k in ("vram_allocated_bytes", "vram_peak_bytes", "vram_reserved_bytes")
            )
        copied = r["offload_bytes_per_token"]
        row = [
            r["mode"],
            r["placement"],
            f"{r['decode_tok_s']:.1f}",
            f"{limit:.1f}",
            f"{r['decode_tok_s'] / limit:.0%}" if limit else "-",
            f"{r['prefill_tok_s']:.0f}",
            vram,
            f"{r['peak_rss_bytes'] / gib:.1f}",
            f"{copied / gib:.2f}" if copied else "-",
            f"{r['offload_wait_share']:.0%}" if copied else "-",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def weight_bytes(shape: str, bytes_per_weight: float) -> int:
    """The model's weights (norms included, a tied head once) at this many bytes each."""
    d = SHAPES[shape]
    dim, heads, kv, ffn = d["dim"], d["n_heads"], d["n_kv_heads"], d["ffn_dim"]
    head_dim = dim // heads
    block = dim * head_dim * (2 * heads + 2 * kv) + 3 * dim * ffn + 2 * dim  # + 2 norms
    rest = d["vocab_size"] * dim * (1 if shape == "135m" else 2) + dim  # + final norm
    return int((d["n_layers"] * block + rest) * bytes_per_weight)


def too_big(shape: str, mode: Mode, free_ram: int, free_gpu: int | None) -> str | None:
    """Why this mode cannot fit in ``free_ram`` bytes of CPU RAM (host weights) and
    ``free_gpu`` bytes of GPU memory (resident weights; None: no GPU to check), or None:
    a worker killed for memory would say nothing useful."""
    per_weight = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}[mode.dtype]
    host = weight_bytes(shape, per_weight) if mode.device == "cpu" or mode.offload else 0
    if host > free_ram:
        return f"needs ~{host / 2**30:.1f} GiB of free RAM for its weights"
    if mode.device == "cuda" and not mode.offload and free_gpu is not None:
        packed = {"none": per_weight, "int8": 1.0, "nf4": 0.5}[mode.quantization]
        need = weight_bytes(shape, packed)
        if need > free_gpu:
            return f"needs ~{need / 2**30:.1f} GiB of free GPU memory"
    return None


def _free_memory() -> tuple[int, int | None]:
    """Free CPU RAM and free GPU memory (None without CUDA), in bytes."""
    import psutil
    import torch

    gpu = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    return psutil.virtual_memory().available, gpu


def run_placement_bench(args: argparse.Namespace) -> int:
    import torch

    from engine import UserError

    if args.shape not in SHAPES:
        raise UserError(f"--shape {args.shape!r}: one of {', '.join(SHAPES)}")
    names = args.modes.split(",") if args.modes else None
    if names is None:
        names = list(GPU_MODES if torch.cuda.is_available() else CPU_MODES)
    unknown = [n for n in names if n not in MODES]
    if unknown:
        raise UserError(f"--modes: unknown mode {unknown[0]!r}; one of {', '.join(MODES)}")
    prompt_tokens = args.prompt_tokens or PROMPT_TOKENS
    results = []
    for name in names:
        short = too_big(args.shape, MODES[name], *_free_memory())
        if short:
            print(f"bench: {args.shape} {name} skipped: {short}", file=sys.stderr)
            continue
        print(f"bench: {args.shape} {name} ...", file=sys.stderr, flush=True)
        argv = [name, args.shape, str(args.tokens), str(args.runs), str(prompt_tokens)]
        try:
            results.append(run_worker("tui.bench.placement", argv))
        except WorkerFailed as exc:
            print(f"bench: {name} failed: {exc}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(results[-1]), flush=True)
    if not results:
        raise UserError("bench: no mode ran (see the lines above)")
    if not args.json:
        r0 = results[0]
        print(
            f"{args.shape}-shaped Llama, random weights, {prompt_tokens}-token prompt, "
            f"{args.tokens} greedy tokens, median of {args.runs}; {r0['device_name']}; "
            f"torch {torch.__version__}"
        )
        bw = [f"{r['mode']}: memory {r['memory_gb_s']:.0f} GB/s" for r in results[:1]]
        if "pcie_gb_s" in r0:
            bw.append(f"PCIe host->device {r0['pcie_gb_s']:.1f} GB/s (pinned)")
        print("measured bandwidth: " + ", ".join(bw))
        print(format_table(results))
    return 0


if __name__ == "__main__":
    mode, shape, tokens, runs, prompt_len = sys.argv[1:6]
    print(json.dumps(worker(mode, shape, int(tokens), int(runs), int(prompt_len))))
