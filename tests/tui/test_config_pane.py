"""The Config pane says what actually runs: one Pilot test per placement kind.

Each test loads a real model through the app's backend and reads the pane's "effective" rows.
Offload needs CUDA; on a machine without one the offload machinery is exercised with the GPU
side on the CPU (as tests/engine/test_offload.py does), which is the one stand-in here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from textual.widgets import Static

from engine import LoadedModel, LocalBackend, Profile, load_model
from engine.placement import Placement
from engine.quantized import int4_cpu_supported
from tests.tui.test_app import idle, wait_for
from tui.app.app import LlamaTuiApp, make_app


async def pane_rows(app: LlamaTuiApp) -> dict[str, str]:
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, idle(app), timeout=60)
        await pilot.pause(0.1)
        text = str(app.chat.query_one("#effective", Static).render())
    rows = [line.split(None, 1) for line in text.splitlines()]
    return {r[0]: r[1].strip() for r in rows if len(r) == 2}


def app_with(config: Path, **overrides: object) -> LlamaTuiApp:
    return make_app(config_path=config, overrides=overrides, cursor_blink=False, save=False)


async def test_float32_shows_no_quantization_and_no_offload(tiny_config: Path) -> None:
    rows = await pane_rows(app_with(tiny_config))
    assert rows["device"] == "cpu" and rows["dtype"] == "float32"
    assert rows["quantization"] == "none" and rows["offload"] == "off"


@pytest.mark.parametrize("mode", ["int8", "nf4"])
async def test_bitsandbytes_layers_are_counted(tiny_config: Path, mode: str) -> None:
    pytest.importorskip("bitsandbytes")
    app = app_with(tiny_config, quantization=mode)
    rows = await pane_rows(app)
    session = app.backend.local.session  # type: ignore[attr-defined]  # ProfileBackend
    n_layers = session.loaded.args.n_layers
    assert rows["quantization"] == f"{mode} (bitsandbytes, {7 * n_layers} layers)"
    assert rows["offload"] == "off"


@pytest.mark.slow
@pytest.mark.skipif(not int4_cpu_supported(), reason="torch without int4 CPU kernels")
async def test_the_int4_kernel_is_named_with_its_matrices(
    tiny_config: Path, default_path: Path
) -> None:
    app = app_with(tiny_config, model=str(default_path), dtype="bfloat16", native_4bit=True)
    rows = await pane_rows(app)
    assert rows["dtype"] == "bf16 matmuls, fp32 rest"
    assert rows["quantization"].startswith("GGUF 4-bit, int4 kernel (")
    n = int(rows["quantization"].split("(")[1].split()[0])
    assert n == 7 * 30  # SmolLM2-135M: 30 blocks of 7 projections, all Q4_1


class CpuOffloadBackend(LocalBackend):
    """LocalBackend whose models load with offload on and the GPU side on the CPU (no CUDA
    here: resolve_placement refuses offload without one, so the placement is built directly)."""

    def _model(self, profile: Profile, progress: object) -> tuple[LoadedModel, bool]:
        placement = Placement(
            torch.device("cpu"), torch.float32, offload=True, offload_exclusion=frozenset({"w2"})
        )
        assert profile.model is not None
        loaded = load_model(Path(profile.model), placement=placement, context_length=256)
        return loaded, False


async def test_offload_and_its_exclusions_are_shown(tiny_config: Path) -> None:
    app = make_app(
        config_path=tiny_config, backend=CpuOffloadBackend(), cursor_blink=False, save=False
    )
    rows = await pane_rows(app)
    assert rows["offload"] == "blocks → cpu (except w2)"
    assert rows["quantization"] == "none"
