"""engine.config: real TOML files in tmp_path, loaded and validated."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from engine.config import (
    KEYS,
    Config,
    Profile,
    SamplingSettings,
    find_config_path,
    load_config,
    profile_to_dict,
    resolve_profile,
    sampling_changed_only,
    weights_key,
)
from engine.errors import ConfigError, UserError

REPO_CONFIG = Path(__file__).resolve().parents[2] / "llama-tui.toml"


def write(tmp_path: Path, text: str, name: str = "llama-tui.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    return message


# --- loading ---------------------------------------------------------------------------


def test_no_file_gives_builtin_defaults() -> None:
    config = load_config(None)
    assert config == Config(None, Profile(name="defaults"), {}, None)
    profile = resolve_profile(config, None, {})
    assert profile == Profile(name="defaults")
    assert profile.sampling == SamplingSettings()
    assert (profile.model, profile.device, profile.dtype) == (None, "auto", "auto")


def test_empty_file_loads_builtin_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.path == tmp_path / "llama-tui.toml"
    assert config.defaults == Profile(name="defaults")
    assert dict(config.profiles) == {}


def test_profile_inherits_defaults_and_overrides_its_own_keys(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            [defaults]
            temperature = 0.5
            top_k = 10
            context_length = 2048

            [profiles.hot]
            temperature = 1
            """,
        )
    )
    hot = config.profiles["hot"]
    assert hot.name == "hot"
    assert hot.sampling.temperature == 1.0 and isinstance(hot.sampling.temperature, float)
    assert hot.sampling.top_k == 10
    assert hot.context_length == 2048
    assert config.defaults.sampling.temperature == 0.5
    assert config.defaults.sampling.top_p == SamplingSettings().top_p


def test_precedence_cli_over_profile_over_defaults(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            [defaults]
            temperature = 0.1
            top_k = 5
            max_new_tokens = 100

            [profiles.p]
            temperature = 0.2
            top_k = 6
            """,
        )
    )
    profile = resolve_profile(config, "p", {"temperature": 0.3, "top_k": None})
    assert profile.sampling.temperature == 0.3  # CLI wins
    assert profile.sampling.top_k == 6  # None override ignored: profile wins
    assert profile.max_new_tokens == 100  # only in defaults
    assert profile.name == "p"


def test_default_profile_is_used_when_no_name_given(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, 'default_profile = "greedy"\n[profiles.greedy]\ntemperature = 0\n')
    )
    assert config.default_profile == "greedy"
    assert resolve_profile(config, None, {}).sampling.temperature == 0.0
    assert resolve_profile(config, "defaults", {}).sampling.temperature == 0.7


def test_relative_model_resolves_against_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    write(
        folder,
        """
        [defaults]
        model = "models/tiny.gguf"
        [profiles.home]
        model = "~/m.gguf"
        [profiles.embedded]
        model = ""
        """,
    )
    config = load_config(Path("conf") / "llama-tui.toml")  # relative to the working dir
    assert config.defaults.model == str(folder / "models" / "tiny.gguf")
    assert config.profiles["home"].model == str(Path.home() / "m.gguf")
    assert config.profiles["embedded"].model is None


def test_seed_minus_one_and_empty_system_prompt_mean_none(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[defaults]\nseed = 7\nsystem_prompt = "Be brief."\n'
            '[profiles.r]\nseed = -1\nsystem_prompt = ""\n',
        )
    )
    assert config.defaults.sampling.seed == 7
    assert config.defaults.system_prompt == "Be brief."
    assert config.profiles["r"].sampling.seed is None
    assert config.profiles["r"].system_prompt is None


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[profiles.a]\n"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.defaults.device = "cuda"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.profiles["b"] = Profile(name="b")  # type: ignore[index]


# --- errors in the file ----------------------------------------------------------------


def test_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[defaults]\ntemperature = 0.5\ntop_k = \n")
    assert message.startswith(f"{tmp_path / 'llama-tui.toml'}:3:")
    assert "invalid TOML" in message
    assert "Traceback" not in message


def test_a_bad_value_with_line_breaks_is_shown_escaped_on_one_line(tmp_path: Path) -> None:
    # found by test_fuzz: a string value holding a newline was echoed raw into the error
    message = load_error(tmp_path, '[defaults]\noffload = "\\n\\u2028x"\n')
    assert message.endswith('defaults.offload = "\\n\\u2028x": must be true or false, not a string')
    assert len(message.splitlines()) == 1


def test_unknown_key_is_named_with_suggestion(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[profiles.creative]\ntemprature = 1.0\n")
    assert "llama-tui.toml" in message
    assert "profiles.creative.temprature" in message
    assert "did you mean 'temperature'" in message


def test_nested_sampling_table_is_rejected(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[defaults.sampling]\ntemperature = 1.0\n")
    assert "defaults.sampling" in message and "flat" in message


def test_unknown_top_level_table_suggests(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[default]\ntemperature = 1.0\n")
    assert "did you mean 'defaults'" in message


def test_profile_key_at_top_level_says_where_it_goes(tmp_path: Path) -> None:
    message = load_error(tmp_path, "temperature = 1.0\n")
    assert "[defaults]" in message


@pytest.mark.parametrize("key", ["top_k", "context_length", "seed", "temperature"])
def test_bool_is_not_a_number(tmp_path: Path, key: str) -> None:
    message = load_error(tmp_path, f"[defaults]\n{key} = true\n")
    assert f"defaults.{key} = true" in message
    assert "not a boolean" in message


def test_float_is_not_an_int(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[defaults]\ntop_k = 40.0\n")
    assert "must be an integer" in message


def test_int_is_not_a_bool(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[defaults]\nchat_template = 1\n")
    assert "defaults.chat_template = 1" in message and "true or false" in message


def test_negative_temperature(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[profiles.creative]\ntemperature = -0.5\n")
    assert f"{tmp_path / 'llama-tui.toml'}:2: profiles.creative.temperature = -0.5" in message
    assert "must be >= 0" in message


@pytest.mark.parametrize("value", ["0", "0.0", "1.5", "-0.1", "nan"])
def test_top_p_out_of_range(tmp_path: Path, value: str) -> None:
    message = load_error(tmp_path, f"[defaults]\ntop_p = {value}\n")
    assert "defaults.top_p" in message
    assert "(0, 1]" in message or "finite" in message


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("min_p", "1.0", "[0, 1)"),
        ("context_length", "8", ">= 16"),
        ("max_new_tokens", "0", ">= 1"),
        ("repeat_penalty", "0", "> 0"),
        ("repeat_last_n", "-1", ">= 0"),
        ("top_k", "-1", ">= 0"),
        ("seed", "-2", "-1 (random)"),
        ("dtype", '"fp16"', "float32, bfloat16, float16, auto"),
        ("theme", '""', "non-empty"),
        ("model", "3", "must be a string"),
        ("typical_p", "0", "in (0, 1] (1 = off)"),
        ("typical_p", "1.5", "in (0, 1] (1 = off)"),
        ("presence_penalty", "nan", "finite"),
        ("frequency_penalty", "inf", "finite"),
        ("presence_penalty", '"high"', "must be a number"),
        ("mirostat", "3", "0 (off), 1 (Mirostat) or 2 (Mirostat 2.0)"),
        ("mirostat", "1.0", "must be an integer"),
        ("mirostat_tau", "0", "> 0"),
        ("mirostat_eta", "-0.1", "> 0"),
    ],
)
def test_out_of_range_values(tmp_path: Path, key: str, value: str, expect: str) -> None:
    message = load_error(tmp_path, f"[defaults]\n{key} = {value}\n")
    assert f"defaults.{key} = {value}" in message
    assert expect in message


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "cuda:0 "])
def test_bad_device(tmp_path: Path, device: str) -> None:
    message = load_error(tmp_path, f'[defaults]\ndevice = "{device}"\n')
    assert f'defaults.device = "{device}"' in message
    assert "cpu, cuda, cuda:N or auto" in message


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12", "auto"])
def test_good_devices(tmp_path: Path, device: str) -> None:
    config = load_config(write(tmp_path, f'[defaults]\ndevice = "{device}"\n'))
    assert config.defaults.device == device


def test_reserved_profile_name(tmp_path: Path) -> None:
    message = load_error(tmp_path, "[profiles.defaults]\ntop_k = 1\n")
    assert "reserved" in message


def test_default_profile_must_exist(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'default_profile = "precize"\n[profiles.precise]\n')
    assert 'default_profile = "precize"' in message and "did you mean 'precise'" in message


def test_unreadable_utf8(tmp_path: Path) -> None:
    path = tmp_path / "llama-tui.toml"
    path.write_bytes(b'[defaults]\ntheme = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


# --- profiles and overrides ------------------------------------------------------------


def test_unknown_profile_lists_available(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[profiles.creative]\n[profiles.precise]\n"))
    with pytest.raises(ConfigError) as info:
        resolve_profile(config, "creatve", {})
    message = str(info.value)
    assert "unknown profile 'creatve'" in message
    assert "did you mean 'creative'" in message
    assert "defaults, creative, precise" in message
    assert "llama-tui.toml" in message


def test_override_errors_name_the_flag(tmp_path: Path) -> None:
    config = load_config(None)
    with pytest.raises(ConfigError, match=r"^--temperature -1: must be >= 0"):
        resolve_profile(config, None, {"temperature": -1})
    with pytest.raises(ConfigError, match=r"^--top-p 0: must be in \(0, 1\]"):
        resolve_profile(config, None, {"top_p": "0"})
    with pytest.raises(ConfigError, match=r"^--top-k true: must be an integer, not a boolean"):
        resolve_profile(config, None, {"top_k": True})
    with pytest.raises(ConfigError, match=r"^--context-length abc: must be an integer"):
        resolve_profile(config, None, {"context_length": "abc"})
    with pytest.raises(ConfigError, match=r"^--device gpu: must be cpu, cuda"):
        resolve_profile(config, None, {"device": "gpu"})
    with pytest.raises(ConfigError, match=r"did you mean 'temperature'"):
        resolve_profile(config, None, {"temprature": 0.5})


def test_override_strings_are_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    profile = resolve_profile(
        load_config(None),
        None,
        {"temperature": "0.25", "seed": "3", "chat_template": "false", "model": "m.gguf"},
    )
    assert profile.sampling.temperature == 0.25
    assert profile.sampling.seed == 3
    assert profile.chat_template is False
    assert profile.model == "m.gguf"  # CLI paths stay relative to the working directory


def test_missing_explicit_config(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="config file not found: .*nope.toml"):
        find_config_path(missing)
    assert issubclass(ConfigError, UserError)


def test_find_config_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, xdg = tmp_path / "work", tmp_path / "xdg"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert find_config_path(None) is None
    if sys.platform.startswith("linux"):
        (xdg / "llama-tui").mkdir(parents=True)
        user = write(xdg / "llama-tui", "")
        assert find_config_path(None) == user
    write(work, "")
    assert find_config_path(None) == Path("llama-tui.toml")
    explicit = write(tmp_path, "", "other.toml")
    assert find_config_path(explicit) == explicit


# --- helpers for live switching ---------------------------------------------------------


def test_profile_to_dict_is_flat_and_json_ready() -> None:
    flat = profile_to_dict(Profile(name="x", sampling=SamplingSettings(seed=1)))
    assert list(flat) == ["name", *KEYS]
    assert flat["seed"] == 1 and flat["temperature"] == 0.7
    assert json.loads(json.dumps(flat)) == flat


def test_sampling_changed_only_and_weights_key(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[profiles.a]\n[profiles.b]\ntemperature = 0\n[profiles.c]\ndtype = "bfloat16"\n'
            "[profiles.d]\ncontext_length = 512\n",
        )
    )
    a, b, c, d = (config.profiles[n] for n in "abcd")
    assert sampling_changed_only(a, b) and sampling_changed_only(a, a)
    assert not sampling_changed_only(a, c) and not sampling_changed_only(a, d)
    base = (None, None, "auto", "auto", True, True, "none", False, ())
    assert weights_key(a) == weights_key(b) == weights_key(d) == base
    assert weights_key(c) == (None, None, "auto", "bfloat16", True, True, "none", False, ())


# --- the repository's example ---------------------------------------------------------


def test_repo_config_loads_and_every_profile_resolves() -> None:
    config = load_config(REPO_CONFIG)
    assert set(config.profiles) >= {"default", "precise", "creative"}
    assert config.default_profile in config.profiles
    default = resolve_profile(config, None, {})
    assert default == dataclasses.replace(config.defaults, name=default.name)
    for name in ["defaults", *config.profiles]:
        profile = resolve_profile(config, name, {})
        assert profile.name == name
        assert profile.model is None  # example uses the embedded model
    assert config.profiles["precise"].sampling.temperature == 0.0
    assert config.profiles["creative"].sampling.temperature == 1.0


def test_max_loaded_models_is_a_positive_integer(tmp_path: Path) -> None:
    path = tmp_path / "llama-tui.toml"
    path.write_text("max_loaded_models = 3\n")
    assert load_config(path).max_loaded_models == 3
    path.write_text("max_loaded_models = 0\n")
    with pytest.raises(ConfigError, match="max_loaded_models = 0: must be an integer >= 1"):
        load_config(path)


def test_new_sampling_keys_load_and_override(tmp_path: Path) -> None:
    text = (
        "[defaults]\ntypical_p = 0.9\npresence_penalty = -0.5\nfrequency_penalty = 1\n"
        "mirostat = 2\nmirostat_tau = 3\nmirostat_eta = 0.2\n"
    )
    s = load_config(write(tmp_path, text)).defaults.sampling
    assert (s.typical_p, s.presence_penalty, s.frequency_penalty) == (0.9, -0.5, 1.0)
    assert (s.mirostat, s.mirostat_tau, s.mirostat_eta) == (2, 3.0, 0.2)
    assert SamplingSettings().mirostat == 0 and SamplingSettings().typical_p == 1.0
    with pytest.raises(ConfigError, match=r"^--mirostat 5: must be 0 \(off\)"):
        resolve_profile(load_config(None), None, {"mirostat": "5"})


def test_placement_keys_are_checked_with_the_key_and_a_suggestion(tmp_path: Path) -> None:
    ok = load_config(
        write(
            tmp_path,
            '[defaults]\nquantization = "nf4"\noffload = true\n'
            'offload_exclusion = ["w1", "w2", "w3", "w1"]\n',
        )
    )
    assert ok.defaults.quantization == "nf4" and ok.defaults.offload is True
    assert ok.defaults.offload_exclusion == ("w1", "w2", "w3")  # in order, repeats dropped
    message = load_error(tmp_path, '[defaults]\noffload_exclusion = ["w1", "ffn_nrom"]\n')
    assert "defaults.offload_exclusion" in message
    assert "unknown name 'ffn_nrom'; did you mean 'ffn_norm'?" in message
    message = load_error(tmp_path, '[defaults]\noffload_exclusion = "w1,w2"\n')
    assert "must be an array of strings" in message
    message = load_error(tmp_path, '[defaults]\nquantization = "int4"\n')
    assert 'quantization = "int4": must be one of none, int8, nf4' in message
    config = load_config(None)
    flag = resolve_profile(config, None, {"offload_exclusion": "w1, w3", "offload": "yes"})
    assert flag.offload_exclusion == ("w1", "w3") and flag.offload is True
    with pytest.raises(ConfigError, match="--offload-exclusion w1,w9: unknown name 'w9'"):
        resolve_profile(config, None, {"offload_exclusion": "w1,w9"})


REMOTE = '[profiles.r]\nbackend = "openai"\nbase_url = "http://127.0.0.1:8080/v1"\n'


def test_remote_profile_keys_load(tmp_path: Path) -> None:
    path = write(
        tmp_path, REMOTE + 'remote_model = "m"\napi_key_env = "MY_KEY"\nrequest_timeout_s = 5\n'
    )
    r = load_config(path).profiles["r"]
    assert (r.backend, r.base_url, r.remote_model, r.api_key_env) == (
        "openai",
        "http://127.0.0.1:8080/v1",
        "m",
        "MY_KEY",
    )
    assert r.request_timeout_s == 5.0
    assert load_config(path).defaults.backend == "local"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (REMOTE + 'device = "cuda"\n', "[profiles.r]: device is a local-engine key"),
        (REMOTE + "native_4bit = false\n", "[profiles.r]: native_4bit is a local-engine key"),
        ('[profiles.r]\nbackend = "openai"\n', 'backend = "openai" needs base_url'),
        ('[profiles.r]\nbase_url = "http://x/v1"\n', "base_url is a remote-server key"),
        ('[profiles.r]\nbackend = "opena"\n', "did you mean 'openai'?"),
        (REMOTE.replace("http://", "ftp://"), "must be an http:// or https:// URL"),
        (REMOTE + "request_timeout_s = 0\n", "request_timeout_s = 0: must be > 0"),
        (REMOTE + "remote_modle = 'x'\n", "did you mean 'remote_model'?"),
    ],
)
def test_remote_profile_mistakes_are_one_line(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, body))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_pasted_key_in_api_key_env_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, REMOTE + 'api_key_env = "sk-secret value"\n'))
    assert "sk-secret" not in str(info.value) and "NAME of an environment variable" in str(
        info.value
    )


def test_local_flags_on_a_remote_profile_are_refused(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, REMOTE))
    with pytest.raises(ConfigError, match="device is a local-engine key"):
        resolve_profile(config, "r", {"device": "cpu"})
    assert resolve_profile(config, "r", {"temperature": "0"}).sampling.temperature == 0.0


def test_shipped_remote_examples_load_when_uncommented(tmp_path: Path) -> None:
    text = REPO_CONFIG.read_text()
    start = text.index("# [profiles.llamacpp]")
    lines = [
        line[2:] if line.startswith("# ") and ("=" in line or line.startswith("# [")) else line
        for line in text[start:].splitlines()
    ]
    body = text[:start] + "\n".join(line for line in lines if not line.startswith("#   "))
    config = load_config(write(tmp_path, body))
    assert {"llamacpp", "vllm", "ollama", "serve"} <= set(config.profiles)
    assert config.profiles["vllm"].api_key_env == "VLLM_KEY"
    assert "--tensor-parallel-size" in text


def test_energy_and_price_keys(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "[defaults]\ncpu_watts_per_core = 6.5\ncost_per_1k_input_tokens = 0.5\n"
            "cost_per_1k_output_tokens = 1.5\n",
        )
    )
    d = config.defaults
    assert (d.cpu_watts_per_core, d.cost_per_1k_input_tokens) == (6.5, 0.5)
    assert d.cost_per_1k_output_tokens == 1.5
    assert "> 0" in load_error(tmp_path, "[defaults]\ncpu_watts_per_core = 0\n")
    assert ">= 0" in load_error(tmp_path, "[defaults]\ncost_per_1k_output_tokens = -1\n")
