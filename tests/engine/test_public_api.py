"""engine/__init__.py: the public API, imported on first use; `import engine` does no work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import engine


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_every_public_name_resolves_from_its_module() -> None:
    assert sorted(engine._EXPORTS) == sorted(engine.__all__)
    for name, module in engine._EXPORTS.items():
        value = getattr(engine, name)
        assert getattr(sys.modules[module], name) is value
    assert dir(engine) == sorted(engine.__all__)


def test_a_submodule_never_hides_the_public_name_it_shares() -> None:
    code = (
        "import engine.session\n"  # imports the submodule engine.generate
        "from engine import generate\n"
        "assert generate.__module__ == 'engine.generate', generate"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_engine_imports_nothing_else() -> None:
    loaded = modules_after("import engine")
    assert not {m for m in loaded if m.startswith("engine.")}
    assert "torch" not in loaded


def test_the_command_line_and_history_need_no_torch() -> None:
    loaded = modules_after("import tui.cli.main\nfrom engine import open_store, load_config")
    assert "torch" not in loaded and "jinja2" not in loaded


def test_a_local_reply_imports_no_http_client(tiny_gguf: Path) -> None:
    """httpx (and the rich console its CLI module brings) cost ~60 ms of every start: only a
    remote profile imports them."""
    code = (
        "from tui.cli.main import main\n"
        f"assert main(['ask', '--model', {str(tiny_gguf)!r}, '--max-new-tokens', '2', 'Hi']) == 0"
    )
    loaded = modules_after(code)
    assert "torch" in loaded  # the reply ran on the local engine
    assert "httpx" not in loaded and "engine.remote.client" not in loaded


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        engine.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("engine.NoSuchThing resolved")


def test_loading_and_running_a_gguf_of_the_fast_types_imports_only_what_it_needs(
    tiny_gguf: Path,
) -> None:
    """No gguf package (nor the yaml and sentencepiece it brings), no psutil, no torch._dynamo:
    the types of the default model (Q4_1, Q8_0, F32) are read by the engine's own code."""
    code = (
        "import torch\n"
        "from pathlib import Path\n"
        "from engine import load_model, resolve_placement\n"
        f"m = load_model(Path({str(tiny_gguf)!r}), context_length=16,\n"
        "    placement=resolve_placement('cpu', 'float32'))\n"
        "m.model(torch.tensor([[1, 2, 3]]))\n"
    )
    loaded = modules_after(code)
    for name in ("gguf", "yaml", "sentencepiece", "psutil", "torch._dynamo", "sympy"):
        assert name not in loaded, name
