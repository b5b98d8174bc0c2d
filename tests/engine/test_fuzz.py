"""Property tests (hypothesis, bounded example counts): config documents and values never give
a traceback and each error names its key; tokenizers round-trip arbitrary Unicode."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import KEYS, load_config, resolve_profile
from engine.errors import ConfigError
from engine.tokenizers import Tokenizer, load_tokenizer
from tests.engine.test_tokenizers_more import train_spm, write_hf_tokenizer, write_tiktoken_file

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),  # TOML has no surrogates
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return (
            '"' + "".join(c if c.isalnum() or c == " " else f"\\U{ord(c):08x}" for c in value) + '"'
        )
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


@FUZZ
@given(
    table=st.sampled_from(["defaults", "profiles.fuzz"]),
    entries=st.dictionaries(st.sampled_from(list(KEYS)), values, min_size=1, max_size=3),
)
def test_any_value_for_any_key_loads_or_names_the_key(
    tmp_path: Path, table: str, entries: dict[str, Any]
) -> None:
    path = tmp_path / "llama-tui.toml"
    body = "".join(f"{k} = {toml_value(v)}\n" for k, v in entries.items())
    path.write_text(f"[{table}]\n{body}", encoding="utf-8")
    try:
        config = load_config(path)
        resolve_profile(config, "fuzz" if table != "defaults" else None, {})
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and "Traceback" not in message
        assert any(key in message for key in entries), message


@FUZZ
@given(st.text(max_size=200))
def test_any_text_as_a_config_file_is_at_most_one_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "llama-tui.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)


@FUZZ
@given(key=st.sampled_from(list(KEYS)), text=st.text(max_size=20))
def test_any_flag_value_is_taken_or_names_the_flag(tiny_gguf: Path, key: str, text: str) -> None:
    try:
        resolve_profile(load_config(None), None, {key: text})
    except ConfigError as exc:
        flag = "--" + key.replace("_", "-")
        assert "\n" not in str(exc) and (flag in str(exc) or key in str(exc)), str(exc)


@pytest.fixture(scope="module")
def tokenizers(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tokenizer]:
    where = tmp_path_factory.mktemp("fuzz-tokenizers")
    spm = where / "spm.model"
    spm.write_bytes(train_spm())
    return {
        "gguf-bpe": tok,  # the embedded model's byte-level BPE (the tiny GGUF's vocab lacks bytes)
        "sentencepiece": load_tokenizer(spm),
        "tiktoken": load_tokenizer(write_tiktoken_file(where / "tokenizer.model")),
        "tokenizer.json": load_tokenizer(write_hf_tokenizer(where / "tokenizer.json", None)),
    }


@pytest.mark.parametrize("kind", ["gguf-bpe", "sentencepiece", "tiktoken", "tokenizer.json"])
def test_tokenizers_round_trip_any_unicode(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    """Exact whenever every byte of the text's UTF-8 is in the vocabulary (the four kinds here
    hold all 256 but SmolLM2's byte-level BPE, which lacks a few: those bytes are dropped, as the
    tokenizer documents, and the rest still comes back)."""
    tok = tokenizers[kind]
    spellable = {tok.token_bytes(i) for i in range(tok.vocab_size)}
    missing = {b for b in range(256) if bytes([b]) not in spellable}
    assert kind == "gguf-bpe" or not missing

    @settings(max_examples=150, deadline=None)
    @given(st.text(max_size=80))
    def round_trip(text: str) -> None:
        ids = tok.encode(text, allow_special=False)
        assert all(0 <= i < tok.vocab_size for i in ids)
        back = tok.decode(ids)
        if not missing & set(text.encode()):
            assert back == text
        else:
            kept = bytes(b for b in text.encode() if b not in missing)
            assert back == kept.decode("utf-8", errors="replace")

    round_trip()
