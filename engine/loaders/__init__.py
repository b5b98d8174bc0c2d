"""Model loading: detect the format from content, build the model, tokenizer and chat template."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.args import ModelArgs
from engine.chat_format import ChatTemplate, chat_template_from_gguf
from engine.config import WEIGHT_KEYS, Profile
from engine.default_model import default_model_path
from engine.dense_prefill import share_scratch
from engine.errors import ModelLoadError
from engine.loaders.cache import cacheable, read_prepared, write_prepared
from engine.loaders.gguf import (
    gguf_model_args,
    has_int4_blocks,
    is_gguf,
    load_gguf_weights,
    rope_freq_factors,
)
from engine.loaders.gguf_file import GGUFFile
from engine.loaders.hf import chat_template_text, load_hf_weights, special_tokens
from engine.loaders.meta import load_meta_weights
from engine.model import Transformer
from engine.offload import BlockStreamer, streamer_of
from engine.placement import Placement, resolve_placement
from engine.quantized import QuantizedHead
from engine.tokenizers import Tokenizer, load_tokenizer_from_gguf

if TYPE_CHECKING:
    from engine.compiled import CompileStatus

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
    placement: Placement  # device, dtype, quantization and offload as asked for
    weights: str  # how the weights are held, for the user: "bfloat16", "4-bit kernel + bfloat16"
    load_s: float
    metadata: dict[str, Any]
    # the prepared-weights cache (loaders/cache.py): "read", "written", "not written: why", "off"
    weights_cache: str = "off"
    compiled: CompileStatus | None = None  # the background build of a compiled decode step

    @property
    def streamer(self) -> BlockStreamer | None:
        """Offload: what copies each block's weights in before it runs (None: all resident)."""
        return streamer_of(self.model)


def load_model(
    path: Path,
    *,
    placement: Placement,
    context_length: int,
    progress: Progress | None = None,
    tokenizer: Path | None = None,
) -> LoadedModel:
    """A GGUF file, a Meta checkpoint folder or a Hugging Face folder, told apart by content,
    with its weights placed as ``placement`` says (device, dtype, quantization, offload).

    ``tokenizer`` overrides where a folder's tokenizer is read from (GGUF files carry theirs).
    """
    path = path.expanduser()
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path} (check --model or `model =`)")
    if path.is_dir():
        return _load_folder(path, placement, context_length, progress, tokenizer)
    if not is_gguf(path):
        raise ModelLoadError(
            f"{path} is not a GGUF file (no GGUF magic bytes); llama-tui loads .gguf files, "
            "Meta checkpoint folders (params.json) and Hugging Face folders (config.json)"
        )
    return _load_gguf(path, placement, context_length, progress)


def _load_gguf(
    path: Path, placement: Placement, context_length: int, progress: Progress | None
) -> LoadedModel:
    t0 = time.perf_counter()
    gguf = GGUFFile(path)
    placement = _int4_placement(placement, gguf)
    tokenizer = load_tokenizer_from_gguf(gguf.metadata, source=path.name)
    template = chat_template_from_gguf(gguf.metadata, source=path.name)
    model, args, n_4bit, cache_state = _gguf_model(gguf, placement, progress)
    dtype, weights = placement.dtype, placement.describe()
    if n_4bit:  # activations, norms and the KV cache run in float32
        head = "4-bit" if isinstance(model.output, QuantizedHead) else weights
        weights = f"4-bit int4 kernel ({n_4bit} tensors), {head} head, float32 activations"
        dtype = torch.float32
    loaded = _loaded(
        path,
        model,
        args,
        tokenizer,
        template,
        placement,
        context_length,
        t0,
        gguf.metadata,
        freq_factors=rope_freq_factors(gguf),
        packed_4bit=n_4bit,
        weights=weights,
        dtype=dtype,
    )
    loaded.weights_cache = cache_state
    return loaded


def _int4_placement(placement: Placement, gguf: GGUFFile) -> Placement:
    """With dtype "auto", 4-bit blocks stay on the int4 kernel, whatever dense dtype this CPU
    measured faster: the kernel takes bfloat16 (the rest still runs in float32)."""
    p = placement
    if p.auto_dtype and p.native_4bit and p.device.type == "cpu" and has_int4_blocks(gguf):
        return replace(p, dtype=torch.bfloat16)
    return p


def _gguf_model(
    gguf: GGUFFile, placement: Placement, progress: Progress | None
) -> tuple[Transformer, ModelArgs, int, str]:
    """The placed model, its args, how many tensors are 4-bit, and what the weights cache did:
    "read" (no dequantization or packing happened), "written", "not written: why", "off"."""
    args = gguf_model_args(gguf)

    def skeleton() -> Transformer:
        return Transformer(args, device="meta")

    if not cacheable(placement):
        model, args, _, n_4bit = load_gguf_weights(gguf, placement=placement, progress=progress)
        return model, args, n_4bit, "off"
    cached = read_prepared(gguf.path, placement, skeleton)
    if not isinstance(cached, str):
        model, info = cached
        if info.get("packed_4bit", 0):
            share_scratch(model)  # as load_gguf_weights does: long prefill chunks run dense
        if progress is not None:
            progress(len(gguf.tensors), len(gguf.tensors))
        return model, args, int(info.get("packed_4bit", 0)), "read"
    model, args, _, n_4bit = load_gguf_weights(gguf, placement=placement, progress=progress)
    state = write_prepared(gguf.path, placement, model, skeleton, {"packed_4bit": n_4bit})
    return model, args, n_4bit, state


TOKENIZER_FILES = ("tokenizer.model", "original/tokenizer.model", "tokenizer.json")


def find_tokenizer(folder: Path, explicit: Path | None) -> Path:
    """The explicit path, else the first of TOKENIZER_FILES that exists in the folder."""
    if explicit is not None:
        explicit = explicit.expanduser()
        if not explicit.is_file():
            raise ModelLoadError(f"tokenizer file not found: {explicit} (check --tokenizer)")
        return explicit
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ModelLoadError(
        f"{folder}: no tokenizer found (looked for {', '.join(TOKENIZER_FILES)}); "
        "pass one with --tokenizer"
    )


def _load_folder(
    folder: Path,
    placement: Placement,
    context_length: int,
    progress: Progress | None,
    tokenizer_path: Path | None,
) -> LoadedModel:
    t0 = time.perf_counter()
    from engine.tokenizers import load_tokenizer

    template: ChatTemplate | None = None
    if (folder / "params.json").is_file():
        tokenizer = load_tokenizer(find_tokenizer(folder, tokenizer_path))
        model, args = load_meta_weights(folder, placement=placement, progress=progress)
        metadata: dict[str, Any] = {"format": "meta"}
    elif (folder / "config.json").is_file():
        tokenizer = load_tokenizer(find_tokenizer(folder, tokenizer_path))
        model, args = load_hf_weights(folder, placement=placement, progress=progress)
        text = chat_template_text(folder)
        if text is not None:
            template = ChatTemplate(
                text, special_tokens=special_tokens(folder), origin=f"{folder.name}/"
            )
        metadata = {"format": "huggingface"}
    elif any(p.suffix == ".pth" for p in folder.iterdir()):
        raise ModelLoadError(
            f"{folder}: missing params.json beside the .pth checkpoint (Meta checkpoints "
            "need the params.json they were published with)"
        )
    else:
        raise ModelLoadError(
            f"{folder}: not a model folder (looked for params.json + consolidated.NN.pth, or "
            "config.json + model.safetensors); --model may also name a .gguf file"
        )
    if tokenizer.vocab_size > args.vocab_size:
        raise ModelLoadError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding "
            f"has {args.vocab_size} rows: it belongs to other weights (check --tokenizer)"
        )
    return _loaded(
        folder, model, args, tokenizer, template, placement, context_length, t0, metadata
    )


def _loaded(
    path: Path,
    model: Transformer,
    args: ModelArgs,
    tokenizer: Tokenizer,
    template: ChatTemplate | None,
    placement: Placement,
    context_length: int,
    t0: float,
    metadata: dict[str, Any],
    *,
    freq_factors: torch.Tensor | None = None,
    packed_4bit: int = 0,
    weights: str | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Rope tables for the context asked for (capped at the trained length), then the record."""
    ctx = min(context_length, args.max_seq_len)
    device = placement.device
    model.init_rope(ctx, device, freq_factors)
    return LoadedModel(
        path=path,
        model=model,
        args=args,
        tokenizer=tokenizer,
        chat_template=template,
        device=device,
        dtype=dtype or placement.dtype,
        context_length=ctx,
        packed_4bit=packed_4bit,
        weights=weights or placement.describe(),
        placement=placement,
        load_s=time.perf_counter() - t0,
        metadata=metadata,
    )


def load_profile_model(
    profile: Profile, progress: Progress | None = None, build_step: bool = True
) -> LoadedModel:
    """The model a profile names (the embedded default when none), on its device and dtype.
    With ``compile`` on, its compiled decode step comes from the cache, else is built in the
    background; ``build_step`` False takes one from the cache only (a one-reply process)."""
    placement = resolve_placement(
        profile.device,
        profile.dtype,
        profile.quantization,
        profile.offload,
        profile.offload_exclusion,
        profile.native_4bit,
    )
    loaded = load_model(
        Path(profile.model) if profile.model else default_model_path(),
        placement=placement,
        context_length=profile.context_length,
        progress=progress,
        tokenizer=Path(profile.tokenizer) if profile.tokenizer else None,
    )
    from engine.compiled import (
        compile_in_background,
        compile_supported,
        compile_wanted,
        load_cached_step,
    )

    if compile_wanted(profile.compile) and compile_supported(loaded.model):
        verify = profile.speculative != "off"  # drafts get a compiled verify step too
        if not build_step:
            load_cached_step(loaded.model, verify)
            return loaded
        source = build_source(profile)
        loaded.compiled = compile_in_background(loaded.model, source, verify)  # eager till then
    return loaded


def build_source(profile: Profile) -> dict[str, Any]:
    """What a build process needs to load the profile's model (engine/step_build.py), as JSON."""
    source = {k: getattr(profile, k) for k in (*WEIGHT_KEYS, "context_length")}
    source["offload_exclusion"] = list(profile.offload_exclusion)
    return source


def switched_to(loaded: LoadedModel, profile: Profile) -> None:
    """``loaded``, kept from an earlier load, now serves ``profile`` (a live switch): with
    ``speculative`` on, its drafts need the compiled verify step, built in the background
    (engine/compiled.py) if the model has none; until then it decodes without drafts."""
    from engine.compiled import compile_supported, compile_wanted, want_verify_step

    model = loaded.model
    if (
        profile.speculative != "off"
        and model.verify_step is None
        and compile_wanted(profile.compile)
        and compile_supported(model)
    ):
        want_verify_step(model, build_source(profile))
