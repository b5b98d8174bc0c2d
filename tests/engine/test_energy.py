"""Energy readers. This machine (and CI) has neither RAPL counters nor an NVIDIA GPU, so the
RAPL reader runs on a fake powercap tree and the NVML reader on a fake pynvml module: the one
place a stand-in is right, because the hardware is absent. The estimate runs for real."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from engine.energy import CpuTimeEstimate, EnergyReading, NvmlMeter, RaplMeter, open_meter


def zone(root: Path, name: str, energy_uj: int, max_uj: int) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "energy_uj").write_text(f"{energy_uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return z


def test_estimate_is_cpu_seconds_times_watts_per_core() -> None:
    meter = CpuTimeEstimate(watts_per_core=12.5)
    assert meter.joules((3.0,), (5.5,)) == 2.5 * 12.5
    assert meter.source == "estimate" and EnergyReading(31.25, "estimate").is_estimate
    assert EnergyReading(2.0, "estimate").per_1k(500) == 4.0


def test_rapl_sums_packages_and_survives_a_wrap(tmp_path: Path) -> None:
    pkg0 = zone(tmp_path, "intel-rapl:0", 999_000_000, 1_000_000_000)
    pkg1 = zone(tmp_path, "intel-rapl:1", 5_000_000, 1_000_000_000)
    zone(tmp_path, "intel-rapl:0:0", 1, 1_000_000_000)  # a sub-zone: inside its package's figure
    meter = RaplMeter.open(tmp_path)
    assert meter is not None and [z.name for z in meter.zones] == ["intel-rapl:0", "intel-rapl:1"]
    start = meter.read()
    (pkg0 / "energy_uj").write_text("1000000\n")  # wrapped: 999 J -> 1000 J (=0) -> 1 J
    (pkg1 / "energy_uj").write_text("8000000\n")  # +3 J
    assert meter.joules(start, meter.read()) == pytest.approx(2.0 + 3.0)


def test_rapl_absent_or_unreadable_gives_none(tmp_path: Path) -> None:
    assert RaplMeter.open(tmp_path) is None
    z = zone(tmp_path, "intel-rapl:0", 1, 10)
    (z / "energy_uj").unlink()  # as when the counter is root-only and cannot be read
    assert RaplMeter.open(tmp_path) is None


def fake_pynvml(counters: list[int]) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: len(counters)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetTotalEnergyConsumption = lambda h: counters[h]  # type: ignore[attr-defined]
    return nvml


def test_nvml_reads_millijoules_of_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    counters = [10_000, 50_000]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(counters))
    meter = NvmlMeter.open()
    assert meter is not None and meter.source == "nvml"
    start = meter.read()
    counters[0] += 1_500  # mJ
    counters[1] += 2_500
    assert meter.joules(start, meter.read()) == pytest.approx(4.0)
    assert open_meter("cuda:0").source == "nvml"
    assert open_meter("cpu", 7.0).source in ("rapl", "estimate")  # NVML is for a GPU's model


def test_without_pynvml_a_cuda_model_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert NvmlMeter.open() is None
    assert open_meter("cuda:0").source in ("rapl", "estimate")
