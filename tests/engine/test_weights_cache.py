"""The prepared-weights cache: the first load writes it, the next reads it without dequantizing
or packing anything, and a stale, corrupt or unwritable cache only costs a rebuild."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import save_file
from torch import nn

import engine.loaders.gguf as gguf_loader
from engine.loaders import LoadedModel, load_model
from engine.loaders.cache import (
    DATA_ALIGN,
    KEY,
    MANIFEST,
    entry_path,
    write_prepared,
)
from engine.model import Transformer
from engine.placement import Placement
from engine.quantized import Int4Linear, Q8Table, QuantizedHead, int4_cpu_supported
from tests.gguf_writer import write_tiny_gguf

CPU = torch.device("cpu")
FLOAT32 = Placement(CPU, torch.float32)
INT4 = Placement(CPU, torch.bfloat16, native_4bit=True)
needs_int4 = pytest.mark.skipif(not int4_cpu_supported(), reason="torch without int4 CPU kernels")
IDS = [1, 17, 402, 9, 3000, 12, 77]

pytestmark = pytest.mark.usefixtures("empty_cache")  # tests/engine/conftest.py


@pytest.fixture(scope="module")
def q4_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("q4") / "tiny-q4.gguf"  # laid out as the default model
    return write_tiny_gguf(path, quantize=Q.Q4_0, quantize_tables=Q.Q8_0)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Calls into the GGUF loader's dequantization and int4 packing, as the loader makes them."""
    calls = {"dequantize": 0, "int4_groups_from_gguf": 0, "q8_table_from_gguf": 0}

    def counting(name: str) -> Callable[..., Any]:
        real = getattr(gguf_loader, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    for name in calls:
        monkeypatch.setattr(gguf_loader, name, counting(name))
    return calls


def load(path: Path, placement: Placement) -> LoadedModel:
    return load_model(path, placement=placement, context_length=64)


def logits(m: LoadedModel) -> torch.Tensor:
    with torch.inference_mode():
        return m.model(torch.tensor([IDS]))[0]


def cold_then_warm(
    path: Path, placement: Placement, counted: dict[str, int]
) -> tuple[LoadedModel, LoadedModel]:
    cold = load(path, placement)
    assert cold.weights_cache == "written"
    assert sum(counted.values()) > 0
    counted.update(dict.fromkeys(counted, 0))
    warm = load(path, placement)
    assert warm.weights_cache == "read"
    assert set(counted.values()) == {0}  # nothing was dequantized or packed
    assert torch.equal(logits(cold), logits(warm))
    for field in ("dtype", "weights", "packed_4bit", "context_length"):
        assert getattr(warm, field) == getattr(cold, field)
    return cold, warm


def test_float32_second_load_reads_the_cache(tiny_gguf: Path, counted: dict[str, int]) -> None:
    cold_then_warm(tiny_gguf, FLOAT32, counted)


def test_cached_tensors_start_on_64_byte_boundaries(tiny_gguf: Path) -> None:
    """Seen on an AVX2 machine: weights mapped 8 bytes off a 16-byte boundary (where safetensors'
    header left them) made float32 GEMMs sum in another order, so a start from the cache gave
    logits ~1e-5 away from a start from the GGUF (and from an offloaded copy)."""
    load(tiny_gguf, FLOAT32)
    with entry_path(tiny_gguf, FLOAT32).open("rb") as f:
        assert (8 + int.from_bytes(f.read(8), "little")) % DATA_ALIGN == 0
    warm = load(tiny_gguf, FLOAT32)
    assert warm.weights_cache == "read"
    sizes = [p.numel() * p.element_size() for p in warm.model.parameters()]
    assert all(size % DATA_ALIGN == 0 for size in sizes)  # so every tensor starts aligned
    assert all(p.data_ptr() % DATA_ALIGN == 0 for p in warm.model.parameters())


def layout(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, type(m).__name__) for name, m in model.named_modules()]


@needs_int4
def test_int4_second_load_rebuilds_the_packed_layers(
    q4_gguf: Path, counted: dict[str, int]
) -> None:
    cold, warm = cold_then_warm(q4_gguf, INT4, counted)
    assert warm.packed_4bit == 14  # 7 projections x 2 blocks
    assert layout(warm.model) == layout(cold.model)  # same layers, fused, same kinds
    attention = warm.model.layers[0].attention
    assert isinstance(attention.wqkv, Int4Linear) and not hasattr(attention, "wq")
    assert isinstance(warm.model.tok_embeddings, Q8Table)
    assert isinstance(warm.model.output, QuantizedHead)
    # the tied head's exact rows are the embedding module itself, as the loader left them
    assert warm.model.output.rows is warm.model.tok_embeddings
    assert not any(t.is_meta for t in warm.model.state_dict().values())


def test_each_placement_has_its_own_entry(tiny_gguf: Path) -> None:
    assert load(tiny_gguf, FLOAT32).weights_cache == "written"
    bf16 = Placement(CPU, torch.bfloat16)
    assert load(tiny_gguf, bf16).weights_cache == "written"
    assert load(tiny_gguf, FLOAT32).weights_cache == "read"
    warm = load(tiny_gguf, bf16)
    assert warm.weights_cache == "read" and warm.model.tok_embeddings.weight.dtype == torch.bfloat16


def copy_of(path: Path, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    target.write_bytes(path.read_bytes())
    return target


def test_a_touched_model_file_is_rebuilt(
    tiny_gguf: Path, tmp_path: Path, counted: dict[str, int]
) -> None:
    path = copy_of(tiny_gguf, tmp_path / "model")
    reference = logits(load(path, FLOAT32))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    counted.update(dequantize=0)
    again = load(path, FLOAT32)
    assert again.weights_cache == "written" and counted["dequantize"] > 0
    assert load(path, FLOAT32).weights_cache == "read"  # the rebuilt entry replaced the stale one
    assert len(list(entry_path(path, FLOAT32).parent.iterdir())) == 1
    with path.open("ab") as fh:  # a different size (trailing bytes a GGUF reader ignores)
        fh.write(b"\0" * 64)
    assert load(path, FLOAT32).weights_cache == "written"
    assert torch.equal(logits(load(path, FLOAT32)), reference)


def test_entries_no_load_can_read_go_when_an_entry_is_written(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    """A deleted or changed model file's entry, an unreadable entry and a killed write's temp
    file are removed by the next write; live entries, live writes and other files stay."""
    kept, deleted, changed = (copy_of(tiny_gguf, tmp_path / name) for name in "abc")
    for path in (kept, deleted, changed):
        assert load(path, FLOAT32).weights_cache == "written"
    folder = entry_path(kept, FLOAT32).parent
    deleted.unlink()
    with changed.open("ab") as fh:  # a different size: its entry's key can never match again
        fh.write(b"\0" * 64)
    garbage = folder / "other-0123456789abcdef.safetensors"
    garbage.write_bytes(os.urandom(256))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    killed = folder / f".x.safetensors.{int(dead.stdout)}.tmp"  # its writer has exited
    running = folder / f".y.safetensors.{os.getpid()}.tmp"  # a write in progress
    stale = folder / f".z.safetensors.{os.getpid()}.tmp"
    unrelated = folder / "README.txt"
    for path in (killed, running, stale, unrelated):
        path.write_bytes(b"x")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))

    fresh = copy_of(tiny_gguf, tmp_path / "d")
    assert load(fresh, FLOAT32).weights_cache == "written"

    left = {p.name for p in folder.iterdir()}
    assert left == {
        entry_path(kept, FLOAT32).name,
        entry_path(fresh, FLOAT32).name,
        running.name,
        unrelated.name,
    }
    assert load(kept, FLOAT32).weights_cache == "read"  # what stayed still reads


def corrupt_truncated(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])


def corrupt_garbage(entry: Path) -> None:
    entry.write_bytes(os.urandom(4096))


def corrupt_header(entry: Path) -> None:
    """A well-formed safetensors file with the right key whose tensors do not fit the model."""
    from safetensors import safe_open

    with safe_open(entry, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "norm.weight"}
    tensors["layers.0.attention.wq.weight"] = torch.zeros(3, 3)
    save_file(tensors, entry, {KEY: meta[KEY], MANIFEST: meta[MANIFEST]})


def corrupt_manifest(entry: Path) -> None:
    from safetensors import safe_open

    with safe_open(entry, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    manifest = meta[MANIFEST].replace('"swapped": {}', '"swapped": {"norm": {"kind": "nope"}}')
    assert manifest != meta[MANIFEST]
    save_file(tensors, entry, {KEY: meta[KEY], MANIFEST: manifest})


@pytest.mark.parametrize(
    "corrupt", [corrupt_truncated, corrupt_garbage, corrupt_header, corrupt_manifest]
)
def test_a_corrupt_cache_file_is_rebuilt(
    tiny_gguf: Path, corrupt: Callable[[Path], None], capsys: pytest.CaptureFixture[str]
) -> None:
    reference = logits(load(tiny_gguf, FLOAT32))
    corrupt(entry_path(tiny_gguf, FLOAT32))
    rebuilt = load(tiny_gguf, FLOAT32)
    assert rebuilt.weights_cache == "written"
    assert torch.equal(logits(rebuilt), reference)
    assert load(tiny_gguf, FLOAT32).weights_cache == "read"
    assert capsys.readouterr().err == ""  # no traceback, no noise


def test_an_unwritable_cache_dir_still_loads(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LLAMA_TUI_CACHE_DIR", str(blocker / "cache"))
    loaded = load(tiny_gguf, FLOAT32)
    assert loaded.weights_cache.startswith("not written: ")
    assert "\n" not in loaded.weights_cache
    assert logits(loaded).isfinite().all()
    assert load(tiny_gguf, FLOAT32).weights_cache.startswith("not written: ")


class Unregistered(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_a_layer_type_without_a_rebuild_recipe_is_not_cached(tiny_gguf: Path) -> None:
    loaded = load(tiny_gguf, FLOAT32)
    model = loaded.model
    model.layers[0].feed_forward = Unregistered()  # type: ignore[assignment]

    def skeleton() -> Transformer:
        return Transformer(loaded.args, device="meta")

    why = write_prepared(tiny_gguf, FLOAT32, model, skeleton, {})
    assert why.startswith("not written: Unregistered at layers.0.feed_forward")


def test_offload_and_bitsandbytes_placements_are_not_cached() -> None:
    from engine.loaders.cache import cacheable

    assert cacheable(FLOAT32) and cacheable(INT4)
    assert not cacheable(Placement(CPU, torch.float32, quantization="int8"))
    assert not cacheable(Placement(torch.device("cuda"), torch.float16))


@pytest.mark.slow
@needs_int4
def test_default_model_warm_start_is_the_same_model(
    default_path: Path, counted: dict[str, int]
) -> None:
    _, warm = cold_then_warm(default_path, INT4, counted)
    assert warm.packed_4bit == 210
    assert warm.weights.startswith("4-bit int4 kernel (210 tensors), 4-bit head")


def test_ask_with_an_unwritable_cache_says_so_in_one_line(tiny_gguf: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "LLAMA_TUI_CACHE_DIR": str(blocker / "cache")}
    argv = ["ask", "--model", str(tiny_gguf), "--max-new-tokens", "2", "--temperature", "0", "hi"]
    proc = subprocess.run(
        [sys.executable, "-m", "tui.cli.main", *argv],
        env={**env, "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "weights cache" in line]
    assert len(notes) == 1 and notes[0].startswith("llama-tui: note: weights cache not written")
    assert "Traceback" not in proc.stderr and proc.stdout  # the reply (random tokens)


# the peak is VmHWM, this process image's own: ru_maxrss would carry over the parent's (pytest's)
# from before exec
LOAD_PEAK = """
import sys, torch
from pathlib import Path
from engine.loaders import load_model
from engine.placement import Placement
placement = Placement(torch.device("cpu"), torch.bfloat16, native_4bit=True)
loaded = load_model(Path(sys.argv[1]), placement=placement, context_length=4096)
status = Path("/proc/self/status").read_text().splitlines()
peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(loaded.weights_cache, peak_kb * 1024)
"""


@pytest.mark.slow
@needs_int4
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="no /proc (not Linux)")
def test_the_default_models_loads_peak_within_its_file_its_cache_and_300_mb(
    default_path: Path, empty_cache: Path
) -> None:
    # the bound on a load's peak RSS: the weights (the GGUF), the prepared-weights
    # cache and 300 MB for the interpreter, torch and the rest; the first load packs every
    # tensor, and its temporaries' freed heap pages are given back as it goes (engine/heap.py)
    peaks = {}
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", LOAD_PEAK, str(default_path)],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        state, peak = proc.stdout.split()
        peaks[state] = int(peak)
    entries = list(empty_cache.glob("weights/*.safetensors"))
    assert set(peaks) == {"written", "read"} and len(entries) == 1
    bound = default_path.stat().st_size + entries[0].stat().st_size + 300_000_000
    assert peaks["written"] <= bound, f"first load: {peaks['written'] / 1e6:.0f} MB peak"
    assert peaks["read"] <= bound, f"second load: {peaks['read'] / 1e6:.0f} MB peak"
