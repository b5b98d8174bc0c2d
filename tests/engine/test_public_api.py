"""engine/__init__.py: the public API, imported on first use; `import engine` does no work."""

from __future__ import annotations

import subprocess
import sys

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


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        engine.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("engine.NoSuchThing resolved")
