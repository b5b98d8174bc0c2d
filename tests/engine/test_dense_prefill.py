"""Where a 4-bit model's prefill chunks run dense: measured on this machine once, remembered,
and obeyed row for row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from gguf import GGMLQuantizationType as Q

import engine.dense_prefill as dense_prefill
from engine.dense_prefill import FEWEST, HIGH, LONGEST, LOW, NEVER, crossing, dense_layers
from engine.loaders import LoadedModel, load_model
from engine.placement import Placement
from engine.quantized import DenseScratch, Int4Linear, QuantizedHead, int4_cpu_supported
from tests.gguf_writer import write_tiny_gguf

pytestmark = [
    pytest.mark.skipif(not int4_cpu_supported(), reason="torch without int4 CPU kernels"),
    pytest.mark.usefixtures("empty_cache"),
]
BF16_4BIT = Placement(torch.device("cpu"), torch.bfloat16, native_4bit=True)


@pytest.fixture(scope="module")
def q4_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama as llama.cpp quantizes it: Q4_1 projections, Q8_0 embedding and head."""
    path = tmp_path_factory.mktemp("q4") / "tiny-q4.gguf"
    return write_tiny_gguf(path, quantize=Q.Q4_1, quantize_tables=Q.Q8_0)


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, float]]:
    """Each measurement a load takes (the real one, counted)."""
    calls: list[dict[str, float]] = []
    real = dense_prefill.measure

    def counting(block: list[Int4Linear]) -> dict[str, float]:
        calls.append(real(block))
        return calls[-1]

    monkeypatch.setattr(dense_prefill, "measure", counting)
    return calls


def load(path: Path) -> LoadedModel:
    return load_model(path, placement=BF16_4BIT, context_length=512)


def records(cache: Path) -> list[dict[str, Any]]:
    data = json.loads((cache / dense_prefill.VERDICT_FILE).read_text())
    return list(data["records"])


def remember(cache: Path, record: dict[str, Any], rows: int | None) -> None:
    """This machine's record for the tiny model, its verdict replaced by ``rows``."""
    text = json.dumps({"records": [{**record, "from_rows": rows}]})
    (cache / dense_prefill.VERDICT_FILE).write_text(text)


def kernel(layer: Int4Linear, x: torch.Tensor) -> torch.Tensor:
    out = torch._weight_int4pack_mm_for_cpu(x.bfloat16(), layer.packed, 32, layer.scales_zeros)
    return out.float()


def test_the_first_load_measures_then_later_loads_read_it(
    q4_path: Path, empty_cache: Path, measured: list[dict[str, float]]
) -> None:
    first = load(q4_path)
    assert len(measured) == 1
    best = measured[0]
    # four times, each way at LOW and HIGH rows, unless the dense way lost by NEVER at once
    assert set(best) == {f"{w}@{r}" for w in ("kernel", "dense") for r in (LOW, HIGH)}
    [record] = records(empty_cache)
    block = [m for n, m in dense_layers(first.model).items() if n.startswith("layers.0.")]
    assert record["key"] == dense_prefill.verdict_key(block)
    # wq|wk|wv, wo, w1|w3 and w2 as [in, out]
    assert sorted(record["key"]["shapes"]) == [[64, 64], [64, 128], [64, 256], [128, 64]]
    assert record["from_rows"] == crossing(best)
    scratch = first.model.layers[0].attention.wqkv.scratch
    assert (scratch.from_rows if scratch else None) == record["from_rows"]

    second = load(q4_path)
    assert len(measured) == 1  # read, not measured again
    again = second.model.layers[0].attention.wqkv.scratch
    assert (again.from_rows if again else None) == record["from_rows"]


def test_rows_from_the_verdict_and_up_run_dense_through_one_buffer(
    q4_path: Path, empty_cache: Path
) -> None:
    load(q4_path)
    [record] = records(empty_cache)
    remember(empty_cache, record, 40)
    m = load(q4_path)
    layers = [x for x in m.model.modules() if isinstance(x, Int4Linear)]
    scratch = layers[0].scratch
    assert isinstance(scratch, DenseScratch) and scratch.from_rows == 40
    assert all(x.scratch is scratch for x in layers[:-1])  # every block projection ...
    assert isinstance(m.model.output, QuantizedHead) and m.model.output.kernel.scratch is None
    att = m.model.layers[0].attention.wqkv
    assert isinstance(att, Int4Linear)
    short, long = torch.randn(39, 64), torch.randn(40, 64)
    assert torch.equal(att(short), kernel(att, short))  # below 40 rows: the int4 kernel
    dense = att(long)  # dense bfloat16: the weights rounded to bfloat16 once
    exact = kernel(att, long)
    assert not torch.equal(dense, exact)
    torch.testing.assert_close(dense, exact, rtol=0.02, atol=0.02 * exact.abs().max())
    with torch.inference_mode():
        m.model(torch.randint(0, 256, (1, 45)))
    largest = max(x.in_features * x.out_features for x in layers[:-1])
    assert scratch.buffer.numel() == largest  # the only memory the dense path adds


def test_a_verdict_of_never_keeps_long_inputs_on_the_kernel(
    q4_path: Path, empty_cache: Path
) -> None:
    load(q4_path)
    [record] = records(empty_cache)
    remember(empty_cache, record, None)
    m = load(q4_path)
    layers = [x for x in m.model.modules() if isinstance(x, Int4Linear)]
    assert layers and all(x.scratch is None for x in layers)
    att = m.model.layers[0].attention.wqkv
    assert isinstance(att, Int4Linear)
    long = torch.randn(LONGEST, 64)
    assert torch.equal(att(long), kernel(att, long))


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps({"records": "none"}),
        json.dumps({"records": [{"key": {"cpu": "another"}, "from_rows": 64}]}),
        "rows out of range",
    ],
)
def test_a_broken_or_foreign_record_is_measured_again_and_others_are_kept(
    q4_path: Path, empty_cache: Path, measured: list[dict[str, float]], text: str
) -> None:
    load(q4_path)
    [record] = records(empty_cache)
    if text == "rows out of range":
        remember(empty_cache, record, FEWEST - 1)
    else:
        (empty_cache / dense_prefill.VERDICT_FILE).write_text(text)
    load(q4_path)
    assert len(measured) == 2
    kept = records(empty_cache)
    assert kept[-1]["key"] == record["key"]
    foreign = [r for r in kept if r["key"] != record["key"]]
    assert foreign == ([{"key": {"cpu": "another"}, "from_rows": 64}] if "another" in text else [])


def test_an_unwritable_cache_folder_still_loads(
    q4_path: Path, empty_cache: Path, measured: list[dict[str, float]]
) -> None:
    empty_cache.parent.mkdir(exist_ok=True)
    empty_cache.write_text("a file where the folder should be")
    load(q4_path)
    load(q4_path)
    assert len(measured) == 2  # nothing remembered: each load measures (tens of ms)


def times(kernel_at: tuple[float, float], dense_at: tuple[float, float]) -> dict[str, float]:
    return {
        f"kernel@{LOW}": kernel_at[0],
        f"kernel@{HIGH}": kernel_at[1],
        f"dense@{LOW}": dense_at[0],
        f"dense@{HIGH}": dense_at[1],
    }


def line(at_low: float, slope: float) -> tuple[float, float]:
    return at_low, at_low + slope * (HIGH - LOW)


def test_the_crossing_of_the_two_lines() -> None:
    # kernel 1 ms at LOW + 0.05 ms a row; dense 3 ms + 0.02 ms a row: equal 66.7 rows past LOW
    assert crossing(times(line(1.0, 0.05), line(3.0, 0.02))) == LOW + 67
    # as the Zen 4 VM measured the default model's block (ms)
    assert crossing(times((1.48, 5.51), (2.41, 3.94))) == 68
    assert crossing(times(line(1.0, 0.05), line(0.5, 0.04))) == FEWEST  # dense faster at once
    assert crossing(times(line(1.0, 0.02), line(3.0, 0.02))) is None  # parallel: never
    assert crossing(times(line(1.0, 0.02), line(3.0, 0.03))) is None  # moving apart
    assert crossing(times(line(1.0, 0.0200), line(9.0, 0.0195))) is None  # past LONGEST
    # NEVER times slower at HIGH rows is never, whatever the lines would say further out
    assert crossing(times((1.0, 1.0), (1.0, NEVER * 1.0 + 0.1))) is None
