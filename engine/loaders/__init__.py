"""Model loading: detect the format from content, build the model, tokenizer and chat template."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.args import ModelArgs
from engine.chat_format import ChatTemplate, chat_template_from_gguf
from engine.config import Profile
from engine.default_model import default_model_path
from engine.errors import ModelLoadError
from engine.loaders.gguf import is_gguf, load_gguf_weights
from engine.loaders.gguf_file import GGUFFile
from engine.model import Transformer
from engine.placement import resolve_device, resolve_dtype
from engine.tokenizers import Tokenizer, load_tokenizer_from_gguf

Progress = Callable[[int, int], None]


@dataclass
class LoadedModel:
    path: Path
    model: Transformer
    args: ModelArgs
    tokenizer: Tokenizer
    chat_template: ChatTemplate | None
    device: torch.device
    dtype: torch.dtype
    context_length: int  # positions the rope tables (and KV caches) cover
    packed_4bit: int  # projection matrices kept 4-bit on the int4 kernel (0 = none)
    weights: str  # how the weights are held, for the user: "bfloat16", "4-bit kernel + bfloat16"
    load_s: float
    metadata: dict[str, Any]


def load_model(
    path: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    context_length: int,
    native_4bit: bool = False,
    progress: Progress | None = None,
) -> LoadedModel:
    t0 = time.perf_counter()
    path = path.expanduser()
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path} (check --model or `model =`)")
    if path.is_dir() or not is_gguf(path):
        raise ModelLoadError(
            f"{path} is not a GGUF file (no GGUF magic bytes); llama-tui loads .gguf models"
        )
    gguf = GGUFFile(path)
    tokenizer = load_tokenizer_from_gguf(gguf.metadata, source=path.name)
    template = chat_template_from_gguf(gguf.metadata, source=path.name)
    model, args, freq_factors, n_4bit = load_gguf_weights(
        gguf, device=device, dtype=dtype, native_4bit=native_4bit, progress=progress
    )
    dtype_name = str(dtype).removeprefix("torch.")
    if n_4bit:  # activations, norms, embeddings and the KV cache run in float32
        dtype = torch.float32
    ctx = min(context_length, args.max_seq_len)
    model.init_rope(ctx, device, freq_factors)
    return LoadedModel(
        path=path,
        model=model,
        args=args,
        tokenizer=tokenizer,
        chat_template=template,
        device=device,
        dtype=dtype,
        context_length=ctx,
        packed_4bit=n_4bit,
        weights=(
            f"4-bit int4 kernel ({n_4bit} tensors), {dtype_name} head, float32 activations"
            if n_4bit
            else dtype_name
        ),
        load_s=time.perf_counter() - t0,
        metadata=gguf.metadata,
    )


def load_profile_model(profile: Profile, progress: Progress | None = None) -> LoadedModel:
    """The model a profile names (the embedded default when none), on its device and dtype."""
    device = resolve_device(profile.device)
    return load_model(
        Path(profile.model) if profile.model else default_model_path(),
        device=device,
        dtype=resolve_dtype(profile.dtype, device),
        context_length=profile.context_length,
        native_4bit=profile.native_4bit,
        progress=progress,
    )
