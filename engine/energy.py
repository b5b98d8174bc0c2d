"""A reply's energy: NVML's GPU energy counter, else RAPL's CPU package counters, else an
estimate from this process's CPU time.

Each meter reads a cumulative counter (``read``) and turns two readings into joules
(``joules``), so the engine queue reads it once when a reply starts and once when it ends.
The estimate is labelled as one wherever it is shown: it is CPU seconds × a per-core power
figure (config key ``cpu_watts_per_core``), not a measurement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Protocol

POWERCAP = Path("/sys/class/powercap")
DEFAULT_WATTS_PER_CORE = 10.0  # one busy core of a desktop or server CPU, roughly (TDP / cores)


@dataclass(frozen=True)
class EnergyReading:
    joules: float
    source: str  # "nvml" (GPU counter), "rapl" (CPU package counters) or "estimate"

    @property
    def is_estimate(self) -> bool:
        return self.source == "estimate"

    def per_1k(self, tokens: int) -> float:
        """Joules per 1,000 tokens (0 when there were none)."""
        return self.joules * 1000 / tokens if tokens > 0 else 0.0


class EnergyMeter(Protocol):
    source: str

    def read(self) -> tuple[float, ...]: ...

    def joules(self, start: tuple[float, ...], end: tuple[float, ...]) -> float: ...


class CpuTimeEstimate:
    """This process's CPU seconds × watts per busy core."""

    source = "estimate"

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE) -> None:
        self.watts_per_core = watts_per_core

    def read(self) -> tuple[float, ...]:
        return (time.process_time(),)

    def joules(self, start: tuple[float, ...], end: tuple[float, ...]) -> float:
        return max(end[0] - start[0], 0.0) * self.watts_per_core


class RaplMeter:
    """The CPU packages' energy counters (``intel-rapl:N/energy_uj``, microjoules), each
    wrapping at its ``max_energy_range_uj``. Sub-zones (core, uncore, dram) are inside their
    package's figure, so only packages are summed."""

    source = "rapl"

    def __init__(self, zones: list[Path]) -> None:
        self.zones = zones
        self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in zones]

    @classmethod
    def open(cls, root: Path = POWERCAP) -> RaplMeter | None:
        """The meter when the counters are there and readable (often root-only), else None."""
        try:
            zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
            meter = cls(zones)
            meter.read()
        except (OSError, ValueError):
            return None
        return meter if zones else None

    def read(self) -> tuple[float, ...]:
        return tuple(float(int((z / "energy_uj").read_text())) for z in self.zones)

    def joules(self, start: tuple[float, ...], end: tuple[float, ...]) -> float:
        total = 0.0
        for a, b, wrap in zip(start, end, self.ranges, strict=True):
            total += b - a if b >= a else b + wrap - a  # the counter wrapped once
        return total / 1e6


class NvmlMeter:
    """The GPUs' total-energy counters (millijoules since the driver loaded), via the
    ``pynvml`` module of nvidia-ml-py."""

    source = "nvml"

    def __init__(self, nvml: ModuleType) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    @classmethod
    def open(cls) -> NvmlMeter | None:
        try:
            import pynvml  # nvidia-ml-py; only present where it was installed

            meter = cls(pynvml)
            meter.read()
        except Exception:  # no module, no driver, or a GPU without the counter
            return None
        return meter if meter.handles else None

    def read(self) -> tuple[float, ...]:
        get = self.nvml.nvmlDeviceGetTotalEnergyConsumption
        return tuple(float(get(h)) for h in self.handles)

    def joules(self, start: tuple[float, ...], end: tuple[float, ...]) -> float:
        return sum(max(b - a, 0.0) for a, b in zip(start, end, strict=True)) / 1000


def open_meter(device: str, watts_per_core: float = DEFAULT_WATTS_PER_CORE) -> EnergyMeter:
    """The best meter this machine offers for a model on ``device`` ("cpu", "cuda:0", ...)."""
    if device.startswith("cuda"):
        nvml = NvmlMeter.open()
        if nvml is not None:
            return nvml
    return RaplMeter.open() or CpuTimeEstimate(watts_per_core)
