"""Profiles: frozen dataclasses, loaded once from llama-tui.toml, then CLI overrides.

Layers, lowest first: built-in defaults < ``[defaults]`` < ``[profiles.NAME]`` < CLI flags.
Every table holds the same flat keys (``KEYS``). An optional top-level
``default_profile = "NAME"`` picks the profile used when none is named; ``defaults`` names
the ``[defaults]`` table itself and is reserved. Every mistake raises one-line ConfigError.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import KW_ONLY, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import platformdirs

from engine.errors import ConfigError
from engine.speculative import MODES as SPECULATIVE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE_NAME = "llama-tui.toml"
DEFAULTS_NAME = "defaults"
DTYPES = ("float32", "bfloat16", "float16", "auto")
CHAT_FORMATS = ("auto", "template", "llama2", "llama3", "chatml", "raw")  # as engine.chat_format
QUANTIZATIONS = ("none", "int8", "nf4")  # bitsandbytes Linear8bitLt / Linear4bit
# Per-block weights that `offload_exclusion` may keep resident on the GPU (Meta's names).
OFFLOAD_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "attention_norm", "ffn_norm")
BACKENDS = ("local", "openai")  # this machine's engine | an OpenAI-compatible server
# Keys that only mean something to one backend: set in a profile of the other, they are refused.
LOCAL_ONLY_KEYS: tuple[str, ...] = ("model", "device", "dtype", "quantization", "offload")
LOCAL_ONLY_KEYS += ("offload_exclusion", "native_4bit", "compile", "speculative")
REMOTE_ONLY_KEYS = ("base_url", "remote_model", "api_key_env", "request_timeout_s")


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.7  # 0 = greedy; must be >= 0
    top_k: int = 40  # 0 = off; >= 0
    top_p: float = 0.95  # (0, 1]; 1 = off
    min_p: float = 0.05  # [0, 1); 0 = off
    repeat_penalty: float = 1.1  # > 0; 1 = off
    repeat_last_n: int = 64  # tokens the penalties look back over; >= 0
    presence_penalty: float = 0.0  # subtracted once from each token seen in the window; 0 = off
    frequency_penalty: float = 0.0  # subtracted per occurrence in the window; 0 = off
    typical_p: float = 1.0  # locally typical sampling mass, (0, 1]; 1 = off
    mirostat: int = 0  # 0 = off, 1 = Mirostat, 2 = Mirostat 2.0 (replace top-k/p, min-p, typical)
    mirostat_tau: float = 5.0  # Mirostat target surprise (bits); > 0
    mirostat_eta: float = 0.1  # Mirostat learning rate; > 0
    seed: int | None = None  # same seed + settings -> same tokens; None (TOML: -1) = random


@dataclass(frozen=True)
class Profile:
    name: str
    _: KW_ONLY  # every other field by name: inserting a key never shifts a caller's arguments
    backend: str = "local"  # "local" = this machine's engine; "openai" = a server at base_url
    base_url: str = ""  # openai: the server's API root, e.g. "http://127.0.0.1:8080/v1"
    remote_model: str = ""  # openai: the server's model id; "" = the first of /v1/models
    api_key_env: str = ""  # openai: NAME of the environment variable holding the key; "" = none
    request_timeout_s: float = 60.0  # openai: seconds to wait for the server's next bytes; > 0
    model: str | None = None  # GGUF path; None (TOML: "") = the embedded SmolLM2-135M-Instruct
    tokenizer: str | None = None  # tokenizer file for Meta/HF folders; None = found beside them
    device: str = "auto"  # "cpu" | "cuda" | "cuda:N" | "auto" (auto: CUDA when present)
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16" | "float16" (auto: see placement.py)
    quantization: str = "none"  # "none" | "int8" | "nf4": bitsandbytes linear layers
    offload: bool = False  # CUDA: blocks' weights in pinned CPU memory, streamed to the GPU
    offload_exclusion: tuple[str, ...] = ()  # with offload: block weights kept on the GPU
    context_length: int = 4096  # tokens of context the KV cache holds; >= 16
    max_new_tokens: int = 512  # per reply; >= 1
    system_prompt: str | None = None  # None (TOML: "") = no system message
    chat_template: bool = True  # False = raw completion (no template)
    chat_format: str = "auto"  # auto, template, llama2, llama3, chatml or raw (chat_format.py)
    native_4bit: bool = True  # bfloat16 on CPU: keep Q4_0/Q4_1 GGUF blocks 4-bit (int4 kernel)
    compile: bool = True  # CPU 4-bit: build a compiled decode step in the background (compiled.py)
    speculative: str = "off"  # "off" | "prompt-lookup": drafts from the prompt (speculative.py)
    theme: str = "llama-dark"  # TUI theme name (validated later by the TUI)
    # per reply: the energy estimate without NVML or RAPL, and "what it would cost at that price"
    cpu_watts_per_core: float = 10.0  # W per busy core for the estimate (engine/energy.py); > 0
    cost_per_1k_input_tokens: float = 0.0  # price per 1,000 prompt tokens; 0 = not shown
    cost_per_1k_output_tokens: float = 0.0  # price per 1,000 generated tokens; 0 = not shown
    sampling: SamplingSettings = SamplingSettings()


@dataclass(frozen=True)
class Persona:
    """A reusable system prompt: ``[prompts.NAME]`` with ``system`` and sampling overrides."""

    name: str
    system: str  # the system prompt it sets ("" = none)
    sampling: Mapping[str, Any] = field(default_factory=dict)  # SamplingSettings keys it sets


@dataclass(frozen=True)
class Config:
    path: Path | None  # file it came from; None = built-in defaults only
    defaults: Profile  # [defaults] applied over the built-in defaults; name "defaults"
    profiles: Mapping[str, Profile]  # [profiles.NAME], each = defaults + its own keys
    default_profile: str | None  # top-level `default_profile = "NAME"`; None = defaults
    max_loaded_models: int = 2  # top-level: models kept loaded for fast profile switching; >= 1
    prompts: Mapping[str, Persona] = field(default_factory=dict)  # [prompts.NAME] personas


_SAMPLING_KEYS = tuple(f.name for f in fields(SamplingSettings))
_PROFILE_KEYS = tuple(f.name for f in fields(Profile) if f.name not in ("name", "sampling"))
KEYS = _PROFILE_KEYS + _SAMPLING_KEYS  # the flat keys of every table and of the overrides
_TOP_KEYS = ("default_profile", "max_loaded_models", DEFAULTS_NAME, "profiles", "prompts")
PERSONA_KEYS = ("system", *_SAMPLING_KEYS)  # the keys of a [prompts.NAME] table
_DEVICE_RE = re.compile(r"cpu|cuda|cuda:\d+|auto")
_URL_RE = re.compile(r"https?://[^\s/]+(/\S*)?")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# key -> (type, check, what the value must be when the check fails)
_RULES: dict[str, tuple[type, Callable[[Any], bool], str]] = {
    "backend": (str, lambda v: v in BACKENDS, "one of " + ", ".join(BACKENDS)),
    "base_url": (
        str,
        lambda v: v == "" or _URL_RE.fullmatch(v) is not None,
        "an http:// or https:// URL such as http://127.0.0.1:8080/v1",
    ),
    "remote_model": (str, lambda v: True, ""),
    "api_key_env": (
        str,
        lambda v: v == "" or _ENV_NAME_RE.fullmatch(v) is not None,
        "the NAME of an environment variable (the key itself never goes in a file)",
    ),
    "request_timeout_s": (float, lambda v: v > 0, "> 0 (seconds)"),
    "model": (str, lambda v: True, ""),
    "tokenizer": (str, lambda v: True, ""),
    "device": (str, lambda v: _DEVICE_RE.fullmatch(v) is not None, "cpu, cuda, cuda:N or auto"),
    "dtype": (str, lambda v: v in DTYPES, "one of " + ", ".join(DTYPES)),
    "context_length": (int, lambda v: v >= 16, ">= 16"),
    "max_new_tokens": (int, lambda v: v >= 1, ">= 1"),
    "system_prompt": (str, lambda v: True, ""),
    "chat_template": (bool, lambda v: True, ""),
    "chat_format": (str, lambda v: v in CHAT_FORMATS, "one of " + ", ".join(CHAT_FORMATS)),
    "native_4bit": (bool, lambda v: True, ""),
    "compile": (bool, lambda v: True, ""),
    "speculative": (str, lambda v: v in SPECULATIVE, "one of " + ", ".join(SPECULATIVE)),
    "quantization": (str, lambda v: v in QUANTIZATIONS, "one of " + ", ".join(QUANTIZATIONS)),
    "offload": (bool, lambda v: True, ""),
    "offload_exclusion": (tuple, lambda v: True, ""),  # names checked in _check, with a hint
    "theme": (str, lambda v: v != "", "a non-empty theme name"),
    "cpu_watts_per_core": (float, lambda v: v > 0, "> 0 (watts per busy core)"),
    "cost_per_1k_input_tokens": (float, lambda v: v >= 0, ">= 0 (0 = not shown)"),
    "cost_per_1k_output_tokens": (float, lambda v: v >= 0, ">= 0 (0 = not shown)"),
    "temperature": (float, lambda v: v >= 0, ">= 0 (0 = greedy)"),
    "top_k": (int, lambda v: v >= 0, ">= 0 (0 = off)"),
    "top_p": (float, lambda v: 0 < v <= 1, "in (0, 1] (1 = off)"),
    "min_p": (float, lambda v: 0 <= v < 1, "in [0, 1) (0 = off)"),
    "repeat_penalty": (float, lambda v: v > 0, "> 0 (1 = off)"),
    "repeat_last_n": (int, lambda v: v >= 0, ">= 0"),
    "presence_penalty": (float, lambda v: True, ""),  # any finite number
    "frequency_penalty": (float, lambda v: True, ""),  # any finite number
    "typical_p": (float, lambda v: 0 < v <= 1, "in (0, 1] (1 = off)"),
    "mirostat": (int, lambda v: v in (0, 1, 2), "0 (off), 1 (Mirostat) or 2 (Mirostat 2.0)"),
    "mirostat_tau": (float, lambda v: v > 0, "> 0"),
    "mirostat_eta": (float, lambda v: v > 0, "> 0"),
    "seed": (int, lambda v: -1 <= v < 2**64, "-1 (random) or in [0, 2**64)"),
}
_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    tuple: "an array of strings",
}
_VALUE_NAMES = {**_TYPE_NAMES, bool: "a boolean", dict: "a table", list: "an array"}


class _Invalid(Exception):
    """A bad value; the caller adds where it came from."""


def _check(key: str, value: Any) -> Any:
    """The value for `key`, type-checked and range-checked; `_Invalid` says what it must be."""
    kind, ok, must = _RULES[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is tuple and isinstance(value, list | tuple):
        if not all(isinstance(v, str) for v in value):
            raise _Invalid("must be an array of strings")
        unknown = [v for v in value if v not in OFFLOAD_NAMES]
        if unknown:
            raise _Invalid(f"unknown name {unknown[0]!r}; {_unknown(unknown[0], OFFLOAD_NAMES)}")
        value = tuple(dict.fromkeys(value))  # in order, without repeats
    if type(value) is not kind:  # exact: a bool is not an int, an int is not a bool
        raise _Invalid(f"must be {_TYPE_NAMES[kind]}, not {_type_name(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid("must be a finite number")
    if not ok(value):
        if key == "backend":
            hint = _unknown(str(value), BACKENDS)
            raise _Invalid(f"must be one of {', '.join(BACKENDS)}; {hint}")
        raise _Invalid(f"must be {must}")
    return value


def _backend_mistake(flat: Mapping[str, Any], explicit: Collection[str]) -> str | None:
    """What is wrong with a table's keys for its backend (None: nothing): a key the backend
    does not use, or a remote profile without base_url. `explicit`: keys set in that table."""
    remote = flat["backend"] == "openai"
    wrong = [k for k in explicit if k in (LOCAL_ONLY_KEYS if remote else REMOTE_ONLY_KEYS)]
    if wrong:
        if remote:
            return (
                f'{wrong[0]} is a local-engine key, but this profile has backend = "openai" '
                '(the server decides it); remove it, or set backend = "local"'
            )
        return (
            f"{wrong[0]} is a remote-server key, but this profile runs the local engine; "
            'set backend = "openai" (and base_url), or remove it'
        )
    if remote and not flat["base_url"]:
        return 'backend = "openai" needs base_url, e.g. base_url = "http://127.0.0.1:8080/v1"'
    return None


def _parse_flag(key: str, text: str) -> Any:
    """A CLI string converted to the key's type (numbers and booleans); `_Invalid` if it isn't."""
    kind = _RULES[key][0]
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise _Invalid(f"must be {_TYPE_NAMES[kind]}") from None
    if kind is tuple:  # --offload-exclusion w1,w2,w3
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind is bool:
        word = text.strip().lower()
        if word not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            raise _Invalid("must be true or false")
        return word in ("true", "yes", "on", "1")
    return text


def _type_name(value: Any) -> str:
    return _VALUE_NAMES.get(type(value), type(value).__name__)


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # escaped as TOML writes it: an error stays one line
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_repr(v) for v in value) + "]"
    return str(value)


def _toml_char(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    if c.isprintable():
        return c
    short = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c)
    return short or (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")


def _unknown(key: str, valid: tuple[str, ...] | list[str]) -> str:
    """'did you mean ...? valid ...' for a key or name that is not in `valid`."""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}valid: {', '.join(valid)}"


def _normalize(key: str, value: Any, base: Path | None) -> Any:
    """Checked values mapped to the dataclass form: "" -> None, -1 seed -> None, model paths."""
    if key in ("model", "tokenizer", "system_prompt") and value == "":
        return None
    if key == "seed" and value == -1:
        return None
    if key in ("model", "tokenizer"):
        path = Path(value).expanduser()
        return os.path.normpath(path if base is None else base / path)
    return value


def _from_flat(name: str, flat: Mapping[str, Any]) -> Profile:
    sampling = SamplingSettings(**{k: flat[k] for k in _SAMPLING_KEYS})
    keys: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()}
    return Profile(name=name, sampling=sampling, **{k: keys[k] for k in _PROFILE_KEYS})


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """Flat view for display and JSON: name, then every key in `KEYS` order."""
    flat: dict[str, Any] = {"name": profile.name}
    flat.update({k: getattr(profile, k) for k in _PROFILE_KEYS})
    flat["offload_exclusion"] = list(profile.offload_exclusion)  # JSON has no tuples
    flat.update({k: getattr(profile.sampling, k) for k in _SAMPLING_KEYS})
    return flat


WEIGHT_KEYS = (
    "model",
    "tokenizer",
    "device",
    "dtype",
    "native_4bit",
    "compile",
    "quantization",
    "offload",
    "offload_exclusion",
)


def weights_key(profile: Profile) -> tuple[Any, ...]:
    """What the loaded weights depend on (WEIGHT_KEYS); a change here means reloading."""
    return tuple(getattr(profile, k) for k in WEIGHT_KEYS)


def sampling_changed_only(a: Profile, b: Profile) -> bool:
    """True when `a` and `b` differ in nothing but sampling settings (and name)."""
    return replace(a, name="", sampling=SamplingSettings()) == replace(
        b, name="", sampling=SamplingSettings()
    )


def find_config_path(explicit: Path | None) -> Path | None:
    """The config file to load: explicit, else ./llama-tui.toml, else the user's; or None."""
    if explicit is not None:
        if not explicit.expanduser().is_file():
            raise ConfigError(f"config file not found: {explicit}")
        return explicit.expanduser()
    local = Path(CONFIG_FILE_NAME)
    if local.is_file():
        return local
    user = platformdirs.user_config_path("llama-tui") / CONFIG_FILE_NAME
    return user if user.is_file() else None


def _where(path: Path, table: str, key: str) -> str:
    """`path:LINE` of `key` in table [table] (just `path` when it cannot be found)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return str(path)
    header = re.compile(r"^\s*\[\s*" + re.escape(table).replace(r"\.", r"\s*\.\s*") + r"\s*\]")
    assignment = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
    inside = False
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("["):
            inside = bool(header.match(line))
        elif inside and assignment.match(line):
            return f"{path}:{number}"
    return str(path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        loc = f"{path}:{where[1]}:{where[2]}" if where else str(path)
        what = msg[: where.start()] if where else msg
        raise ConfigError(f"{loc}: invalid TOML: {what}; fix the syntax") from None


def _table(path: Path, dotted: str, raw: Any, base: Path, flat: dict[str, Any]) -> dict[str, Any]:
    """`flat` updated with the checked keys of one TOML table."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {dotted} must be a table ([{dotted}]), not {_type_name(raw)}")
    out = dict(flat)
    for key, value in raw.items():
        if key not in _RULES:
            extra = "; keys are flat (no sub-tables)" if isinstance(value, dict) else ""
            raise ConfigError(
                f"{path}: unknown key {dotted}.{key}{extra}; {_unknown(key, list(KEYS))}"
            )
        try:
            out[key] = _normalize(key, _check(key, value), base)
        except _Invalid as e:
            shown = "(not shown)" if key == "api_key_env" else _toml_repr(value)  # a pasted key?
            raise ConfigError(
                f"{_where(path, dotted, key)}: {dotted}.{key} = {shown}: {e}"
            ) from None
    return out


def load_config(path: Path | None) -> Config:
    """The validated config from `path` (None: built-in defaults only)."""
    builtin = profile_to_dict(Profile(name=DEFAULTS_NAME))
    if path is None:
        return Config(None, _from_flat(DEFAULTS_NAME, builtin), MappingProxyType({}), None)
    data = _read_toml(path)
    for key in data:
        if key not in _TOP_KEYS:
            hint = (
                f"put it under [{DEFAULTS_NAME}] or [profiles.NAME]"
                if key in _RULES
                else _unknown(key, _TOP_KEYS)
            )
            raise ConfigError(f"{path}: unknown top-level key {key}; {hint}")
    base = path.expanduser().resolve().parent
    raw_defaults = data.get(DEFAULTS_NAME, {})
    defaults_flat = _table(path, DEFAULTS_NAME, raw_defaults, base, builtin)
    if (mistake := _backend_mistake(defaults_flat, raw_defaults)) is not None:
        raise ConfigError(f"{path}: [{DEFAULTS_NAME}]: {mistake}")
    raw_profiles = data.get("profiles", {})
    if not isinstance(raw_profiles, dict):
        raise ConfigError(f"{path}: profiles must be tables ([profiles.NAME]), not a value")
    profiles: dict[str, Profile] = {}
    for name, raw in raw_profiles.items():
        if name == DEFAULTS_NAME:
            raise ConfigError(
                f"{path}: [profiles.{DEFAULTS_NAME}]: the name '{DEFAULTS_NAME}' is reserved "
                f"for the [{DEFAULTS_NAME}] table; rename the profile"
            )
        flat = _table(path, f"profiles.{name}", raw, base, defaults_flat)
        if (mistake := _backend_mistake(flat, raw)) is not None:
            raise ConfigError(f"{path}: [profiles.{name}]: {mistake}")
        profiles[name] = _from_flat(name, flat)
    default_profile = data.get("default_profile")
    names = [DEFAULTS_NAME, *profiles]
    if default_profile is not None and default_profile not in names:
        raise ConfigError(
            f"{path}: default_profile = {_toml_repr(default_profile)}: no such profile; "
            f"{_unknown(str(default_profile), names)}"
        )
    max_loaded = data.get("max_loaded_models", 2)
    if type(max_loaded) is not int or max_loaded < 1:
        raise ConfigError(
            f"{path}: max_loaded_models = {_toml_repr(max_loaded)}: must be an integer >= 1"
        )
    return Config(
        path=path,
        defaults=_from_flat(DEFAULTS_NAME, defaults_flat),
        profiles=MappingProxyType(profiles),
        default_profile=default_profile,
        max_loaded_models=max_loaded,
        prompts=MappingProxyType(_personas(path, data.get("prompts", {}))),
    )


def _personas(path: Path, raw: Any) -> dict[str, Persona]:
    """The checked [prompts.NAME] tables."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: prompts must be tables ([prompts.NAME]), not a value")
    out: dict[str, Persona] = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: prompts.{name} must be a table ([prompts.{name}])")
        if not isinstance(table.get("system"), str):
            raise ConfigError(
                f'{path}: [prompts.{name}] needs system = "..." (the system prompt it sets)'
            )
        sampling: dict[str, Any] = {}
        for key, value in table.items():
            if key not in PERSONA_KEYS:
                raise ConfigError(
                    f"{path}: unknown key prompts.{name}.{key}; {_unknown(key, PERSONA_KEYS)}"
                )
            if key == "system":
                continue
            try:
                sampling[key] = _normalize(key, _check(key, value), None)
            except _Invalid as e:
                raise ConfigError(
                    f"{path}: prompts.{name}.{key} = {_toml_repr(value)}: {e}"
                ) from None
        out[name] = Persona(name, table["system"], MappingProxyType(sampling))
    return out


def apply_persona(profile: Profile, persona: Persona | None) -> Profile:
    """`profile` with the persona's system prompt and sampling (None: as it is)."""
    if persona is None:
        return profile
    sampling = replace(profile.sampling, **persona.sampling)
    return replace(profile, system_prompt=persona.system or None, sampling=sampling)


def resolve_profile(config: Config, name: str | None, overrides: Mapping[str, Any]) -> Profile:
    """Profile `name` (None: the config's default) with CLI `overrides` applied on top.

    Override keys are those of `KEYS`; None values are ignored; strings are parsed for
    numeric and boolean keys; a relative `model` is relative to the working directory.
    """
    name = name if name is not None else config.default_profile or DEFAULTS_NAME
    if name == DEFAULTS_NAME:
        profile = config.defaults
    elif name in config.profiles:
        profile = config.profiles[name]
    else:
        source = f" in {config.path}" if config.path else " (no config file loaded)"
        names = [DEFAULTS_NAME, *config.profiles]
        raise ConfigError(f"unknown profile '{name}'{source}; {_unknown(name, names)}")
    flat = profile_to_dict(profile)
    for key, value in overrides.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key not in _RULES:
            raise ConfigError(f"unknown setting {flag}; {_unknown(key, list(KEYS))}")
        try:
            parsed = _parse_flag(key, value) if isinstance(value, str) else value
            flat[key] = _normalize(key, _check(key, parsed), None)
        except _Invalid as e:
            shown = _toml_repr(value) if isinstance(value, bool) else str(value)
            shown = shown if shown.isprintable() else repr(shown)  # one line, whatever was typed
            shown = "(not shown)" if key == "api_key_env" else shown  # a pasted key?
            raise ConfigError(f"{flag} {shown}: {e}") from None
    given = [k for k, v in overrides.items() if v is not None]
    if (mistake := _backend_mistake(flat, given)) is not None:
        raise ConfigError(f"profile {profile.name} with these flags: {mistake}")
    return _from_flat(profile.name, flat)
