"""Built-in chat formats (Llama 2, Llama 3, ChatML, raw) and the chat_format selection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sentencepiece

from engine.chat_format import (
    CHAT_FORMATS,
    CHATML_TEMPLATE,
    ChatTemplate,
    Llama2Format,
    Llama3Format,
    Message,
    chat_format_by_name,
    encode_dialog,
    encode_raw,
    resolve_chat_format,
)
from engine.config import CHAT_FORMATS as CONFIG_CHAT_FORMATS
from engine.config import load_config, resolve_profile
from engine.errors import ConfigError, UserError
from engine.tokenizers import Tokenizer, load_tokenizer
from tests.engine.test_tokenizers_more import train_spm, write_hf_tokenizer, write_tiktoken_file

DIALOG = [
    Message("system", "  You say hello "),
    Message("user", "Hi"),
    Message("assistant", "hello world"),
    Message("user", "<|eot_id|>"),
]


@pytest.fixture(scope="module")
def llama3_tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return load_tokenizer(write_tiktoken_file(tmp_path_factory.mktemp("l3") / "vocab"))


@pytest.fixture(scope="module")
def spm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, Any]:
    proto = train_spm()
    path = tmp_path_factory.mktemp("l2") / "tokenizer.model"
    path.write_bytes(proto)
    return load_tokenizer(path), sentencepiece.SentencePieceProcessor(model_proto=proto)


def test_llama3_format_is_metas_encode_dialog_prompt(llama3_tok: Tokenizer) -> None:
    # 276 <|begin_of_text|>, 282 <|start_header_id|>, 283 <|end_header_id|>, 285 <|eot_id|>;
    # 269 "system", 272 "user", 275 "ass", 265 "\n\n", 259 "hello", 263 " world", 273 "Hi".
    assistant = [275, 105, 266, 97, 110, 116]
    eot_as_text = [60, 124, 101, 111, 116, 95, 105, 100, 124, 62]
    expected = [
        *[276, 282, 269, 283, 265, 89, 111, 117, 32, 115, 97, 121, 32, 259, 285],  # stripped
        *[282, 272, 283, 265, 273, 285],
        *[282, *assistant, 283, 265, 259, 263, 285],
        *[282, 272, 283, 265, *eot_as_text, 285],  # typed special text stays text
        *[282, *assistant, 283, 265],
    ]
    assert Llama3Format(llama3_tok).encode(DIALOG) == expected
    assert Llama3Format(llama3_tok).encode(DIALOG, add_generation_prompt=False) == expected[:-9]


def test_llama2_format_is_metas_chat_completion(spm: tuple[Tokenizer, Any]) -> None:
    tok, sp = spm
    ids = Llama2Format(tok).encode(DIALOG)
    # Meta: each (user, answer) pair encoded with bos=True, eos=True; the last user turn bos only.
    first = "[INST] <<SYS>>\n  You say hello \n<</SYS>>\n\nHi [/INST] hello world "
    expected = [1, *sp.encode(first), 2, 1, *sp.encode("[INST] <|eot_id|> [/INST]")]
    assert ids == expected
    assert sp.decode(ids) == first + " [INST] <|eot_id|> [/INST]"  # a dummy prefix per turn
    assert Llama2Format(tok).encode([Message("user", " hi ")]) == [
        1,
        *sp.encode("[INST] hi [/INST]"),
    ]


def test_llama2_format_literal_ids(spm: tuple[Tokenizer, Any]) -> None:
    tok, sp = spm
    ids = Llama2Format(tok).encode([Message("user", "Hi"), Message("assistant", "ok")])
    pieces = [sp.id_to_piece(i) for i in ids]
    assert ids[0] == 1 and ids[-1] == 2
    assert "".join(pieces[1:-1]) == "▁[INST]▁Hi▁[/INST]▁ok▁"


def test_llama2_format_rejects_non_alternating_roles(spm: tuple[Tokenizer, Any]) -> None:
    with pytest.raises(UserError, match="taking turns"):
        Llama2Format(spm[0]).encode([Message("user", "a"), Message("user", "b")])


def test_chatml_and_raw(llama3_tok: Tokenizer) -> None:
    chatml = chat_format_by_name("chatml", llama3_tok)
    messages = [Message("user", "Hi")]
    assert chatml.encode(messages) == encode_dialog(
        llama3_tok, ChatTemplate(CHATML_TEMPLATE), messages
    )
    raw = chat_format_by_name("raw", llama3_tok)
    assert raw.encode([Message("user", "hello"), Message("assistant", " world")]) == [276, 259, 263]
    assert raw.encode(messages) == encode_raw(llama3_tok, "Hi")


def test_auto_selection(tmp_path: Path, llama3_tok: Tokenizer, spm: tuple[Tokenizer, Any]) -> None:
    own = ChatTemplate(CHATML_TEMPLATE)
    assert resolve_chat_format("auto", spm[0], own).name == "template"
    assert resolve_chat_format("auto", llama3_tok, None).name == "llama3"
    assert resolve_chat_format("auto", spm[0], None).name == "llama2"
    no_headers = load_tokenizer(write_hf_tokenizer(tmp_path / "tok.json", None))
    assert resolve_chat_format("auto", no_headers, None).name == "chatml"
    assert resolve_chat_format("llama2", llama3_tok, own).name == "llama2"  # explicit wins


def test_bad_names_and_missing_pieces(spm: tuple[Tokenizer, Any]) -> None:
    with pytest.raises(UserError, match="no chat template"):
        chat_format_by_name("template", spm[0], None, "m.gguf")
    with pytest.raises(UserError, match="unknown chat format"):
        chat_format_by_name("vicuna", spm[0])
    with pytest.raises(UserError, match="start_header_id"):
        Llama3Format(spm[0]).encode([Message("user", "hi")])


def test_encode_dialog_adds_sentencepiece_bos_once(spm: tuple[Tokenizer, Any]) -> None:
    tok, sp = spm
    template = ChatTemplate(
        "{{ bos_token }}{{ messages[0]['content'] }}", special_tokens={"bos_token": "<s>"}
    )
    assert encode_dialog(tok, template, [Message("user", "hi")]) == [1, *sp.encode("hi")]
    assert encode_raw(tok, "<s>hi") == [1, *sp.encode("<s>hi")]


def test_config_chat_format(tmp_path: Path) -> None:
    assert CONFIG_CHAT_FORMATS == CHAT_FORMATS
    path = tmp_path / "llama-tui.toml"
    path.write_text('[defaults]\nchat_format = "llama3"\n[profiles.x]\nchat_format = "raw"\n')
    config = load_config(path)
    assert config.defaults.chat_format == "llama3" and config.profiles["x"].chat_format == "raw"
    assert resolve_profile(config, "x", {"chat_format": "chatml"}).chat_format == "chatml"
    path.write_text('[defaults]\nchat_format = "vicuna"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "chat_format" in str(err.value) and "llama2" in str(err.value)
    assert "\n" not in str(err.value)
