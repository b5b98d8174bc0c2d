"""dtype "auto" on a CPU: a measured verdict, remembered per machine; Q4 files keep the int4
kernel whatever it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as Q

import engine.cpu_dtype as cpu_dtype
from engine.loaders import load_model
from engine.placement import resolve_placement
from engine.quantized import int4_cpu_supported
from tests.gguf_writer import write_tiny_gguf

pytestmark = pytest.mark.usefixtures("empty_cache")  # tests/engine/conftest.py


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, float]]:
    """Each measurement the verdict takes (the real one, counted)."""
    calls: list[dict[str, float]] = []
    real = cpu_dtype.measure

    def counting() -> dict[str, float]:
        calls.append(real())
        return calls[-1]

    monkeypatch.setattr(cpu_dtype, "measure", counting)
    return calls


def test_the_verdict_is_measured_once_then_read(
    empty_cache: Path, measured: list[dict[str, float]]
) -> None:
    first = cpu_dtype.cpu_dense_dtype()
    assert first in (torch.float32, torch.bfloat16) and len(measured) == 1
    assert set(measured[0]) == {"float32", "bfloat16"} and all(s > 0 for s in measured[0].values())
    record = json.loads((empty_cache / cpu_dtype.VERDICT_FILE).read_text())
    assert record["key"] == cpu_dtype.verdict_key()
    assert record["dtype"] == str(first).removeprefix("torch.")
    assert cpu_dtype.cpu_dense_dtype() == first and len(measured) == 1


def test_the_remembered_verdict_is_what_auto_picks(
    empty_cache: Path, measured: list[dict[str, float]]
) -> None:
    for name in ("bfloat16", "float32"):
        empty_cache.mkdir(exist_ok=True)
        record = {"key": cpu_dtype.verdict_key(), "dtype": name}
        (empty_cache / cpu_dtype.VERDICT_FILE).write_text(json.dumps(record))
        placement = resolve_placement("cpu", "auto")
        assert placement.dtype == getattr(torch, name) and placement.auto_dtype
    assert measured == []
    assert not resolve_placement("cpu", "float32").auto_dtype


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "",
        json.dumps({"key": {"cpu": "another CPU", "torch": torch.__version__}, "dtype": "float32"}),
        json.dumps({"key": None, "dtype": "bfloat16"}),
        json.dumps(["float32"]),
        "KEY_BUT_BAD_DTYPE",
    ],
)
def test_a_corrupt_or_foreign_verdict_is_measured_again(
    empty_cache: Path, measured: list[dict[str, float]], text: str
) -> None:
    if text == "KEY_BUT_BAD_DTYPE":
        text = json.dumps({"key": cpu_dtype.verdict_key(), "dtype": "float16"})
    empty_cache.mkdir()
    (empty_cache / cpu_dtype.VERDICT_FILE).write_text(text)
    assert cpu_dtype.cpu_dense_dtype() in (torch.float32, torch.bfloat16)
    assert len(measured) == 1
    record = json.loads((empty_cache / cpu_dtype.VERDICT_FILE).read_text())
    assert record["key"] == cpu_dtype.verdict_key()  # rewritten whole


def test_an_unwritable_cache_measures_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, measured: list[dict[str, float]]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LLAMA_TUI_CACHE_DIR", str(blocker / "cache"))
    assert cpu_dtype.cpu_dense_dtype() in (torch.float32, torch.bfloat16)
    assert cpu_dtype.cpu_dense_dtype() in (torch.float32, torch.bfloat16)
    assert len(measured) == 2


def test_measuring_leaves_the_thread_count_alone() -> None:
    before = torch.get_num_threads()
    cpu_dtype.measure()
    assert torch.get_num_threads() == before


def remember(folder: Path, name: str) -> None:
    folder.mkdir(exist_ok=True)
    record = {"key": cpu_dtype.verdict_key(), "dtype": name}
    (folder / cpu_dtype.VERDICT_FILE).write_text(json.dumps(record))


@pytest.mark.skipif(not int4_cpu_supported(), reason="torch without int4 CPU kernels")
def test_auto_keeps_q4_files_on_the_int4_kernel_and_others_on_the_verdict(
    empty_cache: Path, tmp_path: Path
) -> None:
    remember(empty_cache, "float32")
    q4 = write_tiny_gguf(tmp_path / "q4.gguf", quantize=Q.Q4_0)
    q8 = write_tiny_gguf(tmp_path / "q8.gguf", quantize=Q.Q8_0)
    auto = resolve_placement("cpu", "auto", native_4bit=True)
    assert auto.dtype == torch.float32
    m4 = load_model(q4, placement=auto, context_length=32)
    assert m4.packed_4bit == 14 and m4.placement.dtype == torch.bfloat16
    assert m4.dtype == torch.float32  # activations
    m8 = load_model(q8, placement=auto, context_length=32)
    assert m8.packed_4bit == 0 and m8.model.layers[0].attention.wq.weight.dtype == torch.float32
    no_int4 = resolve_placement("cpu", "auto", native_4bit=False)
    assert load_model(q4, placement=no_int4, context_length=32).packed_4bit == 0
    explicit = resolve_placement("cpu", "float32", native_4bit=True)
    assert load_model(q4, placement=explicit, context_length=32).packed_4bit == 0
