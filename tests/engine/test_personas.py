"""[prompts.NAME] personas in llama-tui.toml: loaded, validated with one-line errors, applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Profile, apply_persona, load_config
from engine.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "llama-tui.toml"
    path.write_text(text)
    return path


def test_personas_load_and_apply(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[prompts.pirate]\nsystem = "Talk like a pirate."\ntemperature = 0.2\nseed = -1\n'
            '[prompts.plain]\nsystem = ""\n',
        )
    )
    pirate = config.prompts["pirate"]
    assert (pirate.name, pirate.system, dict(pirate.sampling)) == (
        "pirate",
        "Talk like a pirate.",
        {"temperature": 0.2, "seed": None},
    )
    base = Profile("p", system_prompt="Be nice.")
    used = apply_persona(base, pirate)
    assert used.system_prompt == "Talk like a pirate." and used.sampling.temperature == 0.2
    assert used.sampling.top_k == base.sampling.top_k and used.name == "p"
    assert apply_persona(base, config.prompts["plain"]).system_prompt is None
    assert apply_persona(base, None) is base


def test_the_shipped_config_has_personas() -> None:
    config = load_config(Path(__file__).parents[2] / "llama-tui.toml")
    assert set(config.prompts) == {"reviewer", "teacher"}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            '[prompts.pirate]\nsystem = "x"\ntemprature = 0.2\n',
            "unknown key prompts.pirate.temprature; did you mean 'temperature'?",
        ),
        ("[prompts.pirate]\ntemperature = 0.2\n", '[prompts.pirate] needs system = "..."'),
        (
            '[prompts.pirate]\nsystem = "x"\ntop_p = 2.0\n',
            "prompts.pirate.top_p = 2.0: must be in (0, 1] (1 = off)",
        ),
        ("prompts = 3\n", "prompts must be tables ([prompts.NAME]), not a value"),
        ('[prompts]\npirate = "x"\n', "prompts.pirate must be a table ([prompts.pirate])"),
    ],
)
def test_bad_personas_are_one_line_errors(tmp_path: Path, text: str, error: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}: {error}") and "\n" not in str(exc.value)
