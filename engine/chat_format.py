"""Messages -> prompt text -> token ids, through the model's own Jinja chat template.

Templates render the way transformers' ``apply_chat_template`` renders them: a sandboxed,
immutable Jinja environment with ``trim_blocks``/``lstrip_blocks``, the ``loopcontrols``
extension, ``raise_exception``, ``strftime_now`` and a non-escaping ``tojson``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import ModelLoadError, UserError
from engine.tokenizers import Tokenizer

# The usual ChatML layout; what a later issue may fall back to for models without a template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Message:
    role: str  # "system", "user" or "assistant"
    content: str


class _TemplateRaised(Exception):
    """Raised by a template's own ``raise_exception(...)``."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask tag): the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ChatTemplate:
    """A compiled chat template plus the special-token strings it may refer to."""

    def __init__(
        self,
        source: str,
        *,
        special_tokens: Mapping[str, str] | None = None,
        origin: str = "",
    ) -> None:
        self.source = source
        self.special_tokens = dict(special_tokens or {})  # bos_token, eos_token, ... -> text
        self._origin = origin or "the model"  # file name for error messages
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols, _GenerationTag],
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ModelLoadError(
                f"invalid chat template in {self._origin} (line {exc.lineno}: "
                f"{_one_line(exc.message or '')}): use --raw, or a model with a working template"
            ) from None

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        try:
            return self._template.render(
                messages=chat,
                add_generation_prompt=add_generation_prompt,
                tools=None,
                documents=None,
                **self.special_tokens,
            )
        except _TemplateRaised as exc:
            reason = _one_line(str(exc))
            raise UserError(
                f"the chat template of {self._origin} rejected the conversation: {reason}"
            ) from None
        except jinja2.TemplateError as exc:
            raise UserError(
                f"the chat template of {self._origin} failed: {_one_line(str(exc))}"
            ) from None


def chat_template_from_gguf(metadata: Mapping[str, Any], source: str = "") -> ChatTemplate | None:
    """The GGUF's ``tokenizer.chat_template``, or None if it has none."""
    text = metadata.get("tokenizer.chat_template")
    if not text:
        return None
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    special: dict[str, str] = {}
    for name, key in (
        ("bos_token", "bos"),
        ("eos_token", "eos"),
        ("unk_token", "unknown"),
        ("pad_token", "padding"),
    ):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and 0 <= int(token_id) < len(tokens):
            special[name] = tokens[int(token_id)]
    return ChatTemplate(str(text), special_tokens=special, origin=source)


def _bos_text(tokenizer: Tokenizer) -> str | None:
    if tokenizer.bos_id is None:
        return None
    return tokenizer.token_bytes(tokenizer.bos_id).decode("utf-8", errors="replace")


def encode_dialog(
    tokenizer: Tokenizer,
    template: ChatTemplate,
    messages: Sequence[Message],
    add_generation_prompt: bool = True,
) -> list[int]:
    """Render the dialog, then encode it with special tokens parsed (as transformers does).

    Control-token text typed inside a message is parsed as that token too, as in transformers'
    default ``apply_chat_template(tokenize=True)``.
    """
    text = template.render(messages, add_generation_prompt=add_generation_prompt)
    ids = tokenizer.encode(text, allow_special=True)
    bos = _bos_text(tokenizer)
    if tokenizer.add_bos and tokenizer.bos_id is not None and not (bos and text.startswith(bos)):
        ids.insert(0, tokenizer.bos_id)
    return ids


def encode_raw(tokenizer: Tokenizer, text: str) -> list[int]:
    """Free-form completion: BOS if the model wants one, then the text.

    Special-token text in ``text`` stays plain text (allow_special=False), unlike transformers'
    ``tokenizer(text)``, so pasted "<|im_end|>" cannot inject a control token.
    """
    ids = tokenizer.encode(text, allow_special=False)
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        ids.insert(0, tokenizer.bos_id)
    return ids
