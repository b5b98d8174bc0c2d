"""What every tokenizer backend offers, the vocabulary constants they share, and StreamDecoder."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Protocol

# llama.cpp token types (tokenizer.ggml.token_type); SentencePiece numbers them the same
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Texts of control tokens that end a turn or a document, across model families.
END_MARKERS = frozenset(
    {
        "<|endoftext|>",
        "<|im_end|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<|eom_id|>",
        "</s>",
        "<end_of_turn>",
        "<|end|>",
        "<|eot|>",
    }
)


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    add_bos: bool  # prepend BOS to a prompt (tokenizer.ggml.add_bos_token)
    stop_ids: frozenset[int]  # ids that end generation

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...


class StreamDecoder:
    """Token ids in, text deltas out; incomplete UTF-8 sequences are held until complete."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token_id), final=False)

    def flush(self) -> str:
        """Text still held back (a truncated sequence becomes U+FFFD); resets the decoder."""
        tail = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return tail
