"""Chat templates rendered and encoded as transformers' apply_chat_template does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.chat_format import (
    CHATML_TEMPLATE,
    ChatTemplate,
    Message,
    chat_template_from_gguf,
    encode_dialog,
    encode_raw,
)
from engine.errors import ModelLoadError, UserError
from engine.tokenizers import Tokenizer, load_tokenizer_from_gguf

pytestmark = pytest.mark.slow

DIALOGS = {
    "system": [
        Message("system", "You are a pirate. Answer in 3 words."),
        Message("user", "Where is the treasure?"),
    ],
    "no_system": [Message("user", "Hi there! What's 12 + 30?")],
    "multi_turn": [
        Message("system", "Be brief."),
        Message("user", "Name a colour."),
        Message("assistant", "Blue."),
        Message("user", "Another one, in français: ça va? 😀"),
        Message("assistant", "Rouge.\n\n  Indented   text  "),
        Message("user", "Thanks <|im_end|> bye"),
    ],
}


@pytest.fixture(scope="module")
def template(metadata: dict[str, Any], gguf_path: Path) -> ChatTemplate:
    found = chat_template_from_gguf(metadata, gguf_path.name)
    assert found is not None
    return found


def as_dicts(messages: list[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def hf_ids(hf_tok: Any, messages: list[Message], add_generation_prompt: bool) -> list[int]:
    out = hf_tok.apply_chat_template(
        as_dicts(messages), add_generation_prompt=add_generation_prompt, tokenize=True
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("name", sorted(DIALOGS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_and_ids_match_transformers(
    tok: Tokenizer, template: ChatTemplate, hf_tok: Any, name: str, add_generation_prompt: bool
) -> None:
    messages = DIALOGS[name]
    text = template.render(messages, add_generation_prompt=add_generation_prompt)
    expected = hf_tok.apply_chat_template(
        as_dicts(messages), add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert text == expected
    ids = encode_dialog(tok, template, messages, add_generation_prompt=add_generation_prompt)
    assert ids == hf_ids(hf_tok, messages, add_generation_prompt)


def test_golden_rendering(template: ChatTemplate) -> None:
    # SmolLM2's template injects its default system prompt when there is none.
    assert template.render([Message("user", "hi")]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_golden_dialog_ids(tok: Tokenizer, template: ChatTemplate) -> None:
    ids = encode_dialog(tok, template, [Message("system", "hi"), Message("user", "hi")])
    assert ids == [1, 9690, 198, 6004, 2, 198, 1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198]


def test_raise_exception_is_a_one_line_user_error(tok: Tokenizer) -> None:
    source = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported,\nsorry') }}{% endif %}{% endfor %}"
    )
    template = ChatTemplate(source, origin="model.gguf")
    with pytest.raises(UserError) as err:
        template.render([Message("system", "x"), Message("user", "y")])
    message = str(err.value)
    assert "System role not supported, sorry" in message and "model.gguf" in message
    assert "\n" not in message
    assert template.render([Message("user", "y")]) == ""


def test_syntax_error_is_a_one_line_model_load_error() -> None:
    with pytest.raises(ModelLoadError) as err:
        ChatTemplate("{% for m in messages %}{{ m.content }", origin="model.gguf")
    assert "model.gguf" in str(err.value) and "\n" not in str(err.value)


def test_sandbox_blocks_python_internals() -> None:
    leak = ChatTemplate("{{ ''.__class__ }}|{{ messages.__class__ }}")
    assert "class" not in leak.render([Message("user", "x")])
    with pytest.raises(UserError):
        ChatTemplate("{{ ''.__class__.__mro__ }}").render([])
    with pytest.raises(UserError):
        ChatTemplate("{{ messages.append(1) }}").render([Message("user", "x")])  # immutable


def test_transformers_extras() -> None:
    source = (
        "{{ messages | tojson }}|{% for m in messages %}{% if loop.index > 1 %}{% break %}"
        "{% endif %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
        "|{{ strftime_now('%Y') | length }}|{{ bos_token }}"
    )
    template = ChatTemplate(source, special_tokens={"bos_token": "<s>"})
    text = template.render([Message("user", "<b>é</b>"), Message("assistant", "never")])
    assert text == (
        '[{"role": "user", "content": "<b>é</b>"}, {"role": "assistant", "content": "never"}]'
        "|<b>é</b>|4|<s>"
    )


def test_no_template_in_metadata(metadata: dict[str, Any]) -> None:
    assert chat_template_from_gguf({**metadata, "tokenizer.chat_template": None}) is None
    assert chat_template_from_gguf({}) is None


def test_special_tokens_from_metadata(template: ChatTemplate) -> None:
    assert template.special_tokens == {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
    }


def test_chatml_matches_smollm_layout(template: ChatTemplate) -> None:
    messages = DIALOGS["multi_turn"]
    assert ChatTemplate(CHATML_TEMPLATE).render(messages) == template.render(messages)


def test_bos_is_added_once(metadata: dict[str, Any]) -> None:
    with_bos = load_tokenizer_from_gguf({**metadata, "tokenizer.ggml.add_bos_token": True})
    plain = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert encode_dialog(with_bos, plain, [Message("user", "hi")]) == [1, 6004]
    # The template writes the BOS text itself (SmolLM2's BOS is <|im_start|>): not doubled.
    starts = ChatTemplate(
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
        special_tokens={"bos_token": "<|im_start|>"},
    )
    assert encode_dialog(with_bos, starts, [Message("user", "hi")]) == [1, 6004]


def test_encode_raw(tok: Tokenizer, metadata: dict[str, Any]) -> None:
    assert encode_raw(tok, "Once upon a time") == tok.encode("Once upon a time")
    assert 2 not in encode_raw(tok, "end<|im_end|>")  # special text stays text
    with_bos = load_tokenizer_from_gguf({**metadata, "tokenizer.ggml.add_bos_token": True})
    assert encode_raw(with_bos, "hi") == [1, 6004]


# Multi-line templates whose output depends on trim_blocks / lstrip_blocks and the extras.
CUSTOM_TEMPLATES = [
    """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] == 'system' %}
<<SYS>>{{ message['content'] | trim }}<</SYS>>
    {% else %}
[{{ message['role'] | upper }}] {{ message['content'] }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT]
{% endif %}""",
    """{%- set ns = namespace(n=0) -%}
{%- for message in messages -%}
  {%- set ns.n = ns.n + 1 -%}
  {%- if loop.index > 3 %}{% break %}{% endif -%}
  {{ ns.n }}:{{ message | tojson }}{{ eos_token }}
{% endfor -%}
{%- if add_generation_prompt %}go{% endif %}""",
]


@pytest.mark.parametrize("source", CUSTOM_TEMPLATES)
def test_custom_templates_match_transformers(hf_tok: Any, source: str) -> None:
    messages = DIALOGS["multi_turn"]
    special = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    ours = ChatTemplate(source, special_tokens=special).render(messages)
    theirs = hf_tok.apply_chat_template(
        as_dicts(messages), chat_template=source, add_generation_prompt=True, tokenize=False
    )
    assert ours == theirs
