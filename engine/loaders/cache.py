"""The prepared-weights cache: a GGUF model as the loader left it, in one safetensors file.

Dequantizing and packing the int4 projections is most of a cold start; after the first load the
final state dict is saved in the user cache folder, and the next start memory-maps it into a
skeleton built on the meta device (``load_state_dict(assign=True)``): no dequantization, no
packing. The file's metadata holds its key (the model file's resolved path, size and mtime, the
placement, CACHE_VERSION, torch's version and a fingerprint of the code that shapes the weights)
and a manifest of the layers the loader swapped in (engine/rebuild.py names their kinds). A
file whose key, header or tensors do not match is ignored and rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from engine.model import Transformer
from engine.placement import Placement
from engine.rebuild import Args, rebuild, spec_of
from engine.user_cache import cache_dir, write_atomically

CACHE_VERSION = 1  # bump when what a cache file holds, or how it is read, changes
KEY, MANIFEST = "llama-tui.key", "llama-tui.manifest"
# modules whose code decides what the prepared tensors are: a change to any of them is a new key
SHAPING_MODULES = (
    "engine.loaders.gguf",
    "engine.loaders.dequant",
    "engine.loaders.state",
    "engine.loaders.cache",
    "engine.quantized",
    "engine.placement",
    "engine.model",
    "engine.rebuild",
)


def cacheable(placement: Placement) -> bool:
    """CPU placements without bitsandbytes layers or offload: their state is plain tensors."""
    p = placement
    return p.device.type == "cpu" and p.quantization == "none" and not p.offload


def _placement_key(p: Placement) -> dict[str, Any]:
    return {
        "device": str(p.device),
        "dtype": str(p.dtype).removeprefix("torch."),
        "native_4bit": p.native_4bit,
    }


def _code_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in SHAPING_MODULES:
        source = getattr(sys.modules.get(name), "__file__", None)
        digest.update(Path(source).read_bytes() if source else name.encode())
    return digest.hexdigest()[:16]


def cache_key(source: Path, placement: Placement) -> dict[str, Any]:
    stat = source.stat()
    return {
        "version": CACHE_VERSION,
        "source": str(source.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "placement": _placement_key(placement),
        "torch": torch.__version__,
        "code": _code_fingerprint(),
    }


def entry_path(source: Path, placement: Placement) -> Path:
    """One file per model file and placement: a rebuild replaces the stale entry."""
    ident = json.dumps([str(source.resolve()), _placement_key(placement)], sort_keys=True)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_dir() / "weights" / f"{source.stem[:48]}-{digest}.safetensors"


@dataclass(frozen=True)
class Manifest:
    swapped: dict[str, Args]  # module name -> {"kind", "args"}: layers the loader swapped in
    removed: list[str]  # skeleton modules the loader deleted (e.g. wq, wk, wv once fused)
    nulled: list[str]  # skeleton modules the loader set to None
    shared: dict[str, str]  # module name -> the first name of the same module (a tied head)
    aliases: dict[str, str]  # state-dict name -> the stored name of the same tensor
    info: dict[str, Any]  # what the loader reports beside the model (e.g. packed_4bit)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        d = json.loads(text)
        swapped, aliases, info = dict(d["swapped"]), dict(d["aliases"]), dict(d["info"])
        removed, nulled, shared = list(d["removed"]), list(d["nulled"]), dict(d["shared"])
        return cls(swapped, removed, nulled, shared, aliases, info)


def _manifest(model: nn.Module, skeleton: nn.Module, info: dict[str, Any]) -> Manifest | str:
    """How ``model``'s module tree differs from the skeleton's, or why it cannot be cached."""
    before = dict(skeleton.named_modules())
    after = dict(model.named_modules())
    swapped: dict[str, Args] = {}
    for name, module in after.items():
        if _under(name, swapped):
            continue  # built by its swapped parent
        old = before.get(name)
        try:
            spec = spec_of(module)
        except ValueError as exc:  # a composite kind with a part no kind describes
            return f"{exc} (at {name})"
        if old is not None and type(old) is type(module) and spec == spec_of(old):
            continue
        if spec is None:
            return f"{type(module).__name__} at {name or 'the root'} is not in engine/rebuild.py"
        swapped[name] = spec
    removed: list[str] = []
    nulled: list[str] = []
    for name in before:
        if name in after or _under(name, swapped) or _under(name, [*removed, *nulled]):
            continue
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        (nulled if leaf in owner._modules else removed).append(name)
    state = model.state_dict()
    held = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    if not held <= set(state):
        return f"non-persistent tensors ({sorted(held - set(state))[0]})"
    aliases: dict[str, str] = {}
    first: dict[tuple[int, tuple[int, ...], torch.dtype], str] = {}
    for name, t in state.items():
        ident = (t.data_ptr(), tuple(t.shape), t.dtype)
        if ident in first:
            aliases[name] = first[ident]
        else:
            first[ident] = name
    first_name: dict[int, str] = {}
    shared: dict[str, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if _under(name, shared):
            continue
        if id(module) in first_name:
            shared[name] = first_name[id(module)]
        else:
            first_name[id(module)] = name
    return Manifest(swapped, removed, nulled, shared, aliases, info)


def _under(name: str, parents: Iterable[str]) -> bool:
    return any(name.startswith(f"{p}.") for p in parents)


def write_prepared(
    source: Path,
    placement: Placement,
    model: Transformer,
    skeleton: Callable[[], Transformer],
    info: dict[str, Any],
) -> str:
    """Save ``model``'s prepared weights; returns "written" or "not written: <why>"."""
    manifest = _manifest(model, skeleton(), info)
    if isinstance(manifest, str):
        return f"not written: {manifest}"
    tensors = {n: t for n, t in model.state_dict().items() if n not in manifest.aliases}
    if not all(t.device.type == "cpu" and t.is_contiguous() for t in tensors.values()):
        return "not written: tensors off the CPU or not contiguous"
    metadata = {KEY: json.dumps(cache_key(source, placement)), MANIFEST: manifest.to_json()}

    def save(temp: Path) -> None:
        try:
            save_file(tensors, temp, metadata)
        except Exception as exc:  # SafetensorError (I/O) or shared storage: treat as OSError
            raise OSError(str(exc).splitlines()[0]) from exc
        align_data(temp)

    target = entry_path(source, placement)
    why = write_atomically(target, save)
    if why is not None:
        return f"not written: {why}"
    prune_stale(target.parent, keep=target)
    return "written"


TEMP_MAX_AGE_S = 24 * 3600  # a write's temp file this old is left over, whoever wrote it


def prune_stale(folder: Path, keep: Path | None = None) -> list[Path]:
    """Remove the weights folder's files that no load can ever read; returns them.

    Each entry is one model file's (entry_path), so a rebuild replaces its own stale entry,
    but an entry whose model file was deleted, moved or changed would stay forever (a 7B
    model's is gigabytes): such entries go, as do unreadable ones and the temp files of
    writes that were killed (their process is gone, or a day passed). A model file on a drive
    that is not mounted counts as gone: its entry costs a rebuild later. Entries of model
    files that are still there are kept, whatever version of llama-tui wrote them."""
    removed: list[Path] = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path == keep or not path.is_file():
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            gone = _writer_gone(path)
        elif path.suffix == ".safetensors":
            gone = _orphaned(path)
        else:
            continue
        if gone:
            try:
                path.unlink()
            except OSError:  # a read-only folder, or another process removed it first
                continue
            removed.append(path)
    return removed


def _writer_gone(temp: Path) -> bool:
    """A temp file of write_atomically (".NAME.PID.tmp") whose writer is no longer running."""
    try:
        pid, age = int(temp.name.split(".")[-2]), time.time() - temp.stat().st_mtime
    except (ValueError, OSError):
        return False
    if age > TEMP_MAX_AGE_S:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # a process of another user: still running
        return False
    return False


def _orphaned(entry: Path) -> bool:
    """True for an entry that cannot be read, or whose model file is gone or has changed."""
    try:
        with safe_open(entry, framework="pt", device="cpu") as f:
            key = json.loads((f.metadata() or {}).get(KEY, "null"))
        source = Path(key["source"])
        size, mtime_ns = int(key["size"]), int(key["mtime_ns"])
    except Exception:  # truncated, garbage, no key: no load can read it
        return True
    try:
        stat = source.stat()
    except FileNotFoundError:
        return True
    except OSError:  # there but not readable now (permissions): keep it
        return False
    return (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns)


DATA_ALIGN = 64  # bytes: where a cache file's tensor data starts


def align_data(path: Path) -> None:
    """Pad a safetensors file's header with spaces (as safetensors pads it to 8) so its data
    starts on a DATA_ALIGN boundary. The memory-mapped tensors then sit where freshly allocated
    ones would: on AVX2, float32 GEMMs on weights 8 bytes off a 16-byte boundary summed in
    another order, and a start from the cache gave logits ~1e-5 off a start from the GGUF."""
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = f.read(n)
    pad = -(8 + n) % DATA_ALIGN
    if pad == 0:
        return
    aligned = path.with_name(path.name + ".aligned")
    try:
        with path.open("rb") as src, aligned.open("wb") as dst:
            dst.write((n + pad).to_bytes(8, "little") + header + b" " * pad)
            src.seek(8 + n)
            shutil.copyfileobj(src, dst, 16 << 20)
        os.replace(aligned, path)
    finally:
        aligned.unlink(missing_ok=True)


def read_prepared(
    source: Path, placement: Placement, skeleton: Callable[[], Transformer]
) -> tuple[Transformer, dict[str, Any]] | str:
    """The cached model and the loader's info, or why there is none ("missing", "stale", ...)."""
    path = entry_path(source, placement)
    if not path.is_file():
        return "missing"
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get(KEY, "null")) != cache_key(source, placement):
                return "stale"
            manifest = Manifest.from_json(meta[MANIFEST])
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        for name, target in manifest.aliases.items():
            tensors[name] = tensors[target]
        model = _assemble(skeleton(), manifest, tensors)
    except Exception:  # a corrupt file: truncated, garbage, a header that does not match
        return "corrupt"
    return model, manifest.info


def _assemble(
    model: Transformer, manifest: Manifest, tensors: Mapping[str, torch.Tensor]
) -> Transformer:
    for name, spec in manifest.swapped.items():
        _set(model, name, rebuild(spec))
    for name in manifest.removed:
        parent, _, leaf = name.rpartition(".")
        delattr(model.get_submodule(parent) if parent else model, leaf)
    for name in manifest.nulled:
        _set(model, name, None)
    model.load_state_dict(tensors, strict=True, assign=True)
    for name, first in manifest.shared.items():
        _set(model, name, model.get_submodule(first))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"cache holds no tensor for {left[0]}")
    return model.eval()


def _set(model: nn.Module, name: str, module: nn.Module | None) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)
