"""scripts/import_cycles.py: finds circles of any length, and finds none in this checkout."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "import_cycles.py"


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_cycles", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_circles_of_two_three_and_one_are_found_and_chains_are_not() -> None:
    graph = {
        "a": {"b"},
        "b": {"a", "c"},  # a <-> b
        "c": {"d"},
        "d": {"e"},
        "e": {"c", "f"},  # c -> d -> e -> c
        "f": {"f"},  # imports itself
        "g": {"a", "h"},  # reaches circles without being in one
        "h": set(),
    }
    assert script().cycles(graph) == [["a", "b"], ["c", "d", "e"], ["f"]]
    assert script().cycles({"x": {"y"}, "y": {"z"}, "z": set()}) == []


def test_engine_and_tui_have_no_import_cycles() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("no import cycles among ")
