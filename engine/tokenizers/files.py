"""Tokenizer files other than SentencePiece's (engine/tokenizers/factory.py tells them apart).

- lines ``base64-token rank``: Llama 3's tiktoken file, with Meta's pattern and 256 specials
  (the layout of Meta's Llama 3.1 ``tokenizer.py``: special i has id ``len(ranks) + i``);
- a ``tokenizer.json`` whose model is byte-level BPE: vocab + merges on ByteLevelBPETokenizer,
  ``added_tokens`` as specials, BOS from the post-processor's template (where HF adds it).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any

import tiktoken

from engine.errors import ModelLoadError
from engine.tokenizers.bpe import PRE_TOKENIZER_PATTERNS, ByteLevelBPETokenizer
from engine.tokenizers.protocol import CONTROL, NORMAL, UNUSED, USER_DEFINED

LLAMA3_PATTERN = PRE_TOKENIZER_PATTERNS["llama3"]
LLAMA3_NUM_RESERVED_SPECIAL_TOKENS = 256
_LLAMA3_NAMED = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message
    "<|eot_id|>",  # end of turn
    "<|python_tag|>",
]
LLAMA3_SPECIAL_TOKENS = _LLAMA3_NAMED + [
    f"<|reserved_special_token_{3 + i}|>"
    for i in range(LLAMA3_NUM_RESERVED_SPECIAL_TOKENS - len(_LLAMA3_NAMED))
]
_RANK_LINE = re.compile(rb"[A-Za-z0-9+/]+=*[ \t]+\d+")


class TiktokenTokenizer:
    """Meta's Llama 3 tokenizer: tiktoken ranks are the ids, specials follow them."""

    def __init__(self, ranks: dict[bytes, int], name: str = "llama3") -> None:
        base = len(ranks)
        self.special_ids = {t: base + i for i, t in enumerate(LLAMA3_SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding(
            name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_ids
        )
        self.vocab_size = self._enc.n_vocab
        self.bos_id: int | None = self.special_ids["<|begin_of_text|>"]
        self.eos_id: int | None = self.special_ids["<|end_of_text|>"]
        self.add_bos = True
        self.stop_ids = frozenset(
            self.special_ids[t] for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
        )

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        allowed: Any = "all" if allow_special else set()
        return list(self._enc.encode(text, allowed_special=allowed, disallowed_special=()))

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} outside the vocabulary of {self.vocab_size}")
        return bytes(self._enc.decode_single_token_bytes(token_id))


def tiktoken_ranks(data: bytes) -> dict[bytes, int] | None:
    """The ranks of a tiktoken file, or None if `data` is not one."""
    lines = [line for line in data.splitlines() if line.strip()]
    if not lines or not all(_RANK_LINE.fullmatch(line.strip()) for line in lines[:64]):
        return None
    ranks: dict[bytes, int] = {}
    try:
        for line in lines:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (ValueError, binascii.Error):
        return None
    return ranks


def _merges(raw: Sequence[Any]) -> list[str]:
    # tokenizers >= 0.20 writes [left, right] pairs; older files write "left right".
    return [m if isinstance(m, str) else " ".join(m) for m in raw]


def _pattern(pre: Mapping[str, Any] | None) -> str | None:
    """Our tiktoken split pattern for a byte-level HF pre-tokenizer, or None if unsupported."""
    if pre is None:
        return None
    kind = pre.get("type")
    if kind == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return PRE_TOKENIZER_PATTERNS["gpt2"]
    if kind != "Sequence":
        return None
    steps = list(pre.get("pretokenizers") or [])
    if len(steps) != 2 or steps[1].get("type") != "ByteLevel" or steps[1].get("add_prefix_space"):
        return None
    first, level = steps
    if first.get("type") == "Split" and not level.get("use_regex", True):
        regex = (first.get("pattern") or {}).get("Regex")
        ok = first.get("behavior") == "Isolated" and not first.get("invert")
        return str(regex) if regex and ok else None
    if first.get("type") == "Digits" and first.get("individual_digits") and level.get("use_regex"):
        return PRE_TOKENIZER_PATTERNS["smollm"]
    return None


def _template_bos(post: Mapping[str, Any] | None) -> int | None:
    """The id a TemplateProcessing post-processor puts before a single sequence, if any."""
    if post is None:
        return None
    if post.get("type") == "Sequence":
        for step in post.get("processors") or []:
            found = _template_bos(step)
            if found is not None:
                return found
        return None
    if post.get("type") != "TemplateProcessing":
        return None
    single = post.get("single") or []
    first = single[0] if single else {}
    name = (first.get("SpecialToken") or {}).get("id")
    ids = ((post.get("special_tokens") or {}).get(name) or {}).get("ids") or []
    return int(ids[0]) if name is not None and len(ids) == 1 else None


def load_hf_tokenizer_json(data: Mapping[str, Any], source: str) -> ByteLevelBPETokenizer:
    model = data.get("model") or {}
    pattern = _pattern(data.get("pre_tokenizer"))
    if model.get("type") != "BPE" or pattern is None or data.get("normalizer") is not None:
        raise ModelLoadError(
            f"{source}: unsupported tokenizer.json (only byte-level BPE, as Llama 3 has, is "
            "supported): for SentencePiece models use their tokenizer.model"
        )
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = list(data.get("added_tokens") or [])
    size = 1 + max([*vocab.values(), *(int(a["id"]) for a in added)], default=-1)
    tokens, types = [f"<unused_{i}>" for i in range(size)], [UNUSED] * size
    for tok, i in vocab.items():
        tokens[i], types[i] = tok, NORMAL
    for a in added:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = CONTROL if a.get("special") else USER_DEFINED
    bos = _template_bos(data.get("post_processor"))
    specials = {a["content"]: int(a["id"]) for a in added}
    eos = next(
        (specials[t] for t in ("<|end_of_text|>", "<|endoftext|>", "</s>") if t in specials), None
    )
    try:
        return ByteLevelBPETokenizer(
            tokens,
            types,
            _merges(model.get("merges") or []),
            pattern,
            bos_id=bos,
            eos_id=eos,
            add_bos=bos is not None,
            name="hf-bpe",
            source=source,
        )
    except ValueError as exc:  # tiktoken could not compile the split pattern
        raise ModelLoadError(
            f"{source}: unsupported pre-tokenizer pattern ({' '.join(str(exc).split())})"
        ) from None
