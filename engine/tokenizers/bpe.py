"""Byte-level BPE (GGUF vocabularies of type "gpt2", tokenizer.json), encoded by tiktoken.

tiktoken's token values are merge ranks and it merges the adjacent pair whose *concatenation*
ranks lowest; HF BPE merges the listed *pair* ranked first in the merges list, and tiktoken also
takes a whole piece that is a token as is. Ranking each merge result by its position in the merges
list makes them agree whenever a vocabulary's merges are self-consistent (SmolLM2's are: every
token, and fuzzed text, is checked against transformers in the tests).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import tiktoken

from engine.errors import ModelLoadError
from engine.tokenizers.protocol import CONTROL, END_MARKERS, NORMAL, USER_DEFINED

# Pre-tokenizer split patterns (tiktoken / fancy-regex syntax), by tokenizer.ggml.pre.
_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# HF Sequence[Digits(individual_digits), ByteLevel(GPT-2 regex)] in one pass: each digit is its
# own piece, and a digit ends the stretch the GPT-2 regex sees, so a whitespace run before a digit
# is matched whole as at end of text: (?!\S) becomes (?![^\s\p{N}]). Same as llama.cpp's chain.
_DIGITS_THEN_GPT2 = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
)
_LLAMA3 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_QWEN2 = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
PRE_TOKENIZER_PATTERNS: dict[str, str] = {
    "default": _GPT2,  # as transformers; llama.cpp's "default" is another multi-stage chain
    "gpt2": _GPT2,
    "gpt-2": _GPT2,
    "smollm": _DIGITS_THEN_GPT2,
    "starcoder": _DIGITS_THEN_GPT2,
    "refact": _DIGITS_THEN_GPT2,
    "llama3": _LLAMA3,
    "llama-v3": _LLAMA3,
    "llama-bpe": _LLAMA3,
    "smaug-bpe": _LLAMA3,
    "falcon3": _LLAMA3,
    "qwen2": _QWEN2,
    "deepseek-r1-qwen": _QWEN2,
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE vocabularies spell bytes so)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# str.translate table: each spelling character -> the latin-1 character of its byte; the other
# characters below 256 -> one latin-1 cannot encode (the rest are past latin-1 already), so one
# translate + encode spells a token, twice as fast as a byte-by-byte lookup over a vocabulary
_TO_LATIN1 = {c: "\u0100" for c in range(256)} | {
    ord(ch): chr(b) for b, ch in bytes_to_unicode().items()
}


def _spelled_bytes(token: str) -> bytes | None:
    """Raw bytes of a byte-level spelled token, or None if it uses characters outside the table."""
    try:
        return token.translate(_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        return None


class ByteLevelBPETokenizer:
    """GPT-2 style byte-level BPE (tokenizer.ggml.model = "gpt2"), encoded by tiktoken."""

    def __init__(
        self,
        tokens: Sequence[str],
        token_types: Sequence[int],
        merges: Sequence[str],
        pattern: str,
        *,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        extra_stop_ids: Sequence[int] = (),
        name: str = "gguf-bpe",
        source: str = "",
    ) -> None:
        n = len(tokens)
        self.vocab_size = n
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        types = list(token_types) if token_types else [NORMAL] * n

        # Raw bytes per id: control / user-defined tokens are plain text, others byte-level spelled
        # (one comprehension over the vocabulary, then the few exceptions one by one).
        plain = (CONTROL, USER_DEFINED)
        pairs = zip(tokens, types, strict=True)
        spelled = [None if k in plain else _spelled_bytes(t) for t, k in pairs]
        specials: dict[str, int] = {}  # token text -> id, matched whole in text
        user_defined: set[str] = set()
        for i in (i for i, raw in enumerate(spelled) if raw is None):
            tok, kind = tokens[i], types[i]
            spelled[i] = tok.encode("utf-8")
            if kind in plain and tok and tok not in specials:
                specials[tok] = i
                if kind == USER_DEFINED:
                    user_defined.add(tok)
        self._bytes: list[bytes] = spelled  # type: ignore[assignment]  # no None left
        # User-defined tokens are always matched whole (llama.cpp); control tokens only if allowed.
        self._with_special = frozenset(specials)
        self._without_special = frozenset(user_defined)

        ranks, self._rank_to_id = _merge_ranks(tokens, types, merges, self._bytes, source)
        self._placeholder_from = n  # ranks >= n and unmapped stand for bytes missing from the vocab
        self._enc = tiktoken.Encoding(
            name,
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens=specials,  # specials rank as their own id in both layouts
        )

        stops = {i for i in (eos_id, *extra_stop_ids) if i is not None and 0 <= i < n}
        stops |= {i for t, i in specials.items() if t in END_MARKERS}
        self.stop_ids = frozenset(stops)

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        allowed = self._with_special if allow_special else self._without_special
        ranks = self._enc.encode(text, allowed_special=allowed, disallowed_special=())
        if self._rank_to_id is None:
            if ranks and max(ranks) >= self._placeholder_from:
                return [r for r in ranks if r < self._placeholder_from]
            return ranks
        table = self._rank_to_id
        return [table[r] for r in ranks if table[r] >= 0]

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} outside the vocabulary of {self.vocab_size}")
        return self._bytes[token_id]

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")


def _merge_ranks(
    tokens: Sequence[str],
    types: Sequence[int],
    merges: Sequence[str],
    raw: Sequence[bytes],
    source: str = "",
) -> tuple[dict[bytes, int], list[int] | None]:
    """tiktoken's mergeable ranks, and a rank -> id table (None when ranks are the ids).

    Single bytes rank as their own id (tiktoken never compares single-byte ranks); merge results
    rank in merges-list order. If the vocabulary already lists merge results in that order (it
    does for SmolLM2), their ids serve as ranks. Bytes absent from the vocabulary get placeholder
    ranks past the end, which encode() drops, as transformers and llama.cpp do.
    """
    n = len(tokens)
    plain = (CONTROL, USER_DEFINED)
    # text -> first id of that text (iterating backwards, the first id is the one kept)
    index = {tokens[i]: i for i in range(n - 1, -1, -1) if types[i] not in plain}
    # "left right" -> the id of left + right, None for a line that is no pair or no token
    found = [index.get(m.replace(" ", "", 1)) if " " in m else None for m in merges]
    if None in found:
        m = merges[found.index(None)]
        where = f" in {source}" if source else ""
        raise ModelLoadError(
            f"tokenizer.ggml.merges entry {m!r}{where} makes no token of the vocabulary: "
            "the file is corrupt; re-download or re-convert it"
        )
    result_ids: list[int] = list(dict.fromkeys(found))  # type: ignore[arg-type]  # first wins
    monotone = all(map(operator.lt, result_ids, result_ids[1:]))

    ranks: dict[bytes, int] = {}
    for i in (i for i, r in enumerate(raw) if len(r) == 1):
        if types[i] not in plain and index.get(tokens[i]) == i:
            ranks.setdefault(raw[i], i)
    rank_to_id: list[int] | None = None
    if monotone:
        for i in result_ids:
            ranks.setdefault(raw[i], i)
    else:
        # ids below n map to themselves (single bytes, specials); n..n+255 are placeholders
        rank_to_id = list(range(n)) + [-1] * (256 + len(result_ids))
        for k, i in enumerate(result_ids):
            ranks.setdefault(raw[i], n + 256 + k)
            rank_to_id[n + 256 + k] = i
    next_rank = n
    for b in range(256):  # tiktoken needs every single byte; placeholders are dropped on encode
        if bytes([b]) not in ranks:
            ranks[bytes([b])] = next_rank
            next_rank += 1
    return ranks, rank_to_id


def load_bpe_from_gguf(metadata: Mapping[str, Any], source: str = "") -> ByteLevelBPETokenizer:
    """The tokenizer a GGUF ``tokenizer.ggml.model = "gpt2"`` vocabulary holds."""
    where = f" in {source}" if source else ""
    pre = metadata.get("tokenizer.ggml.pre", "default")
    pattern = PRE_TOKENIZER_PATTERNS.get(pre)
    if pattern is None:
        raise ModelLoadError(
            f"unsupported tokenizer.ggml.pre {pre!r}{where}: supported are "
            f"{', '.join(sorted(PRE_TOKENIZER_PATTERNS))}"
        )
    tokens = metadata.get("tokenizer.ggml.tokens")
    merges = metadata.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ModelLoadError(
            f"tokenizer.ggml.tokens or tokenizer.ggml.merges missing{where}: the file has no "
            "usable vocabulary; re-convert it with a recent llama.cpp"
        )
    types = metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise ModelLoadError(
            f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens{where}: "
            "the file is corrupt; re-download or re-convert it"
        )

    def token_id(key: str) -> int | None:
        value = metadata.get(f"tokenizer.ggml.{key}")
        return int(value) if value is not None and 0 <= int(value) < len(tokens) else None

    return ByteLevelBPETokenizer(
        tokens,
        [int(t) for t in types],
        merges,
        pattern,
        bos_id=token_id("bos_token_id"),
        eos_id=token_id("eos_token_id"),
        add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        extra_stop_ids=[
            i for i in (token_id("eot_token_id"), token_id("eom_token_id")) if i is not None
        ],
        name=f"gguf-{pre}",
        source=source,
    )
