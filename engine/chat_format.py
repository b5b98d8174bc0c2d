"""Messages -> token ids: the model's own Jinja chat template, or a built-in format.

Built-in formats for weights without a template: Llama 2 and Llama 3 exactly as Meta's reference
code builds them (token by token), ChatML, and raw; ``resolve_chat_format`` picks one from the
profile's ``chat_format`` ("auto": the template, else a guess from the vocabulary).

Templates render the way transformers' ``apply_chat_template`` renders them: a sandboxed,
immutable Jinja environment with ``trim_blocks``/``lstrip_blocks``, the ``loopcontrols``
extension, ``raise_exception``, ``strftime_now`` and a non-escaping ``tojson``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from engine.errors import ModelLoadError, UserError
from engine.tokenizers import SentencePieceTokenizer, Tokenizer

# The usual ChatML layout: the chatml format, and the last resort of auto.
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


# --- Built-in formats, for weights without a template -------------------------------------------

CHAT_FORMATS = ("auto", "template", "llama2", "llama3", "chatml", "raw")


class ChatFormatter(Protocol):
    @property
    def name(self) -> str: ...  # one of CHAT_FORMATS, as chosen

    def encode(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]: ...


def special_id(tokenizer: Tokenizer, text: str) -> int | None:
    """The id of control token `text`, or None if the vocabulary has no such single token."""
    ids = tokenizer.encode(text, allow_special=True)
    if len(ids) != 1 or ids == tokenizer.encode(text, allow_special=False):
        return None
    return ids[0]


@dataclass(frozen=True)
class TemplateFormat:
    """A Jinja template (the model's own, or ChatML), encoded by ``encode_dialog``."""

    tokenizer: Tokenizer
    template: ChatTemplate
    name: str = "template"

    def encode(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        return encode_dialog(self.tokenizer, self.template, messages, add_generation_prompt)


@dataclass(frozen=True)
class RawFormat:
    """No chat layout: BOS (if the model wants one), then the messages' text back to back."""

    tokenizer: Tokenizer
    name: str = "raw"

    def encode(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        return encode_raw(self.tokenizer, "".join(m.content for m in messages))


@dataclass(frozen=True)
class Llama2Format:
    """Meta's Llama 2 ``chat_completion``: each [INST] turn encoded on its own, BOS ... EOS."""

    tokenizer: Tokenizer
    name: str = "llama2"

    def encode(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        tok = self.tokenizer
        if tok.bos_id is None or tok.eos_id is None:
            raise UserError("the llama2 chat format needs a vocabulary with BOS and EOS tokens")
        dialog = list(messages)
        if dialog and dialog[0].role == "system":
            rest = dialog[1:] or [Message("user", "")]
            system = f"<<SYS>>\n{dialog[0].content}\n<</SYS>>\n\n"
            dialog = [Message(rest[0].role, system + rest[0].content), *rest[1:]]
        for k, m in enumerate(dialog):
            if m.role != ("user" if k % 2 == 0 else "assistant"):
                raise UserError(
                    "the llama2 chat format needs an optional system message, then user and "
                    "assistant messages taking turns"
                )
        ids: list[int] = []
        for prompt, answer in zip(dialog[::2], dialog[1::2], strict=False):
            text = f"[INST] {prompt.content.strip()} [/INST] {answer.content.strip()} "
            ids += [tok.bos_id, *tok.encode(text, allow_special=False), tok.eos_id]
        if len(dialog) % 2:
            text = f"[INST] {dialog[-1].content.strip()} [/INST]"
            ids += [tok.bos_id, *tok.encode(text, allow_special=False)]
        return ids


_LLAMA3_NEEDS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


@dataclass(frozen=True)
class Llama3Format:
    """Meta's Llama 3 ``ChatFormat.encode_dialog_prompt``; message text never parses specials."""

    tokenizer: Tokenizer
    name: str = "llama3"

    def _ids(self) -> dict[str, int]:
        found = {t: special_id(self.tokenizer, t) for t in _LLAMA3_NEEDS}
        missing = [t for t, i in found.items() if i is None]
        if missing:
            raise UserError(
                f"the llama3 chat format needs {', '.join(missing)} in the vocabulary: "
                "pick another chat_format"
            )
        return {t: i for t, i in found.items() if i is not None}

    def _header(self, role: str, special: Mapping[str, int]) -> list[int]:
        tok = self.tokenizer
        return [
            special["<|start_header_id|>"],
            *tok.encode(role, allow_special=False),
            special["<|end_header_id|>"],
            *tok.encode("\n\n", allow_special=False),
        ]

    def encode(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        special = self._ids()
        ids = [special["<|begin_of_text|>"]]
        for m in messages:
            ids += self._header(m.role, special)
            ids += self.tokenizer.encode(m.content.strip(), allow_special=False)
            ids.append(special["<|eot_id|>"])
        if add_generation_prompt:
            ids += self._header("assistant", special)
        return ids


def chat_format_by_name(
    name: str, tokenizer: Tokenizer, template: ChatTemplate | None = None, origin: str = ""
) -> ChatFormatter:
    """The formatter `name` (one of CHAT_FORMATS but "auto"); `origin` names the model."""
    if name == "template":
        if template is None:
            model = origin or "the model"
            raise UserError(
                f"{model} has no chat template: set chat_format to llama2, llama3, chatml or raw"
            )
        return TemplateFormat(tokenizer, template)
    if name == "llama2":
        return Llama2Format(tokenizer)
    if name == "llama3":
        return Llama3Format(tokenizer)
    if name == "chatml":
        return TemplateFormat(tokenizer, ChatTemplate(CHATML_TEMPLATE, origin="ChatML"), "chatml")
    if name == "raw":
        return RawFormat(tokenizer)
    raise UserError(f"unknown chat format {name!r}: valid are {', '.join(CHAT_FORMATS)}")


def guess_chat_format(tokenizer: Tokenizer) -> str:
    """For weights without a template: llama3 by its specials, llama2 by SentencePiece, chatml."""
    if all(special_id(tokenizer, t) is not None for t in _LLAMA3_NEEDS):
        return "llama3"
    if isinstance(tokenizer, SentencePieceTokenizer) and "[INST]" not in tokenizer.special_ids:
        if tokenizer.bos_id is not None and tokenizer.eos_id is not None:
            return "llama2"
    return "chatml"


def resolve_chat_format(
    name: str, tokenizer: Tokenizer, template: ChatTemplate | None, origin: str = ""
) -> ChatFormatter:
    """Profile ``chat_format``: "auto" = the model's template, else a guess from the vocabulary."""
    if name == "auto":
        name = "template" if template is not None else guess_chat_format(tokenizer)
    return chat_format_by_name(name, tokenizer, template, origin)
