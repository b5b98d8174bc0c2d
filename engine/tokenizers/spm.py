"""SentencePiece backend (Llama 1/2 ``tokenizer.model``, GGUF ``tokenizer.ggml.model = "llama"``).

Encoding is sentencepiece's own, as Meta's Llama 2 ``Tokenizer.encode`` does it (``sp.encode``;
BOS/EOS are added by the chat format, not here). A GGUF vocabulary is turned back into the
SentencePiece model it came from: a ModelProto serialized by hand below (a few protobuf fields,
so no protobuf dependency), BPE with byte fallback and no normalization, as llama.cpp runs it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import ModelLoadError
from engine.tokenizers.protocol import (
    BYTE,
    CONTROL,
    END_MARKERS,
    NORMAL,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
)

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class SentencePieceTokenizer:
    """A SentencePiece model; ``allow_special`` parses control-token text (``<s>``) whole."""

    def __init__(
        self,
        model_proto: bytes,
        *,
        bos_id: int | None = None,
        eos_id: int | None = None,
        add_bos: bool = True,
        extra_stop_ids: Sequence[int] = (),
        source: str = "",
    ) -> None:
        import sentencepiece  # here: only SentencePiece vocabularies need it

        sp = sentencepiece.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as exc:
            where = f"{source}: " if source else ""
            reason = " ".join(str(exc).split())
            raise ModelLoadError(
                f"{where}not a usable SentencePiece model ({reason}); re-download or re-convert it"
            ) from None
        self._sp = sp
        n = sp.get_piece_size()
        self.vocab_size = n
        self.bos_id = bos_id if bos_id is not None else _valid(sp.bos_id(), n)
        self.eos_id = eos_id if eos_id is not None else _valid(sp.eos_id(), n)
        self.add_bos = add_bos
        self._bytes: list[bytes] = []
        controls: dict[str, int] = {}
        for i in range(n):
            piece = sp.id_to_piece(i)
            byte = _BYTE_PIECE.fullmatch(piece) if sp.is_byte(i) else None
            if byte is not None:
                self._bytes.append(bytes([int(byte[1], 16)]))
            else:
                self._bytes.append(piece.replace("\u2581", " ").encode("utf-8"))
            if sp.is_control(i) and piece:
                controls.setdefault(piece, i)
        self.special_ids = controls  # control-token text -> id
        # Longest first, so that a control text containing another one wins.
        alternatives = "|".join(re.escape(t) for t in sorted(controls, key=len, reverse=True))
        self._special_re = re.compile(f"({alternatives})") if controls else None
        stops = {i for i in (self.eos_id, *extra_stop_ids) if i is not None and 0 <= i < n}
        stops |= {i for t, i in controls.items() if t in END_MARKERS}
        self.stop_ids = frozenset(stops)

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        if not allow_special or self._special_re is None:
            return list(self._sp.encode(text))
        # As llama.cpp: text between control tokens is encoded on its own (dummy prefix each time).
        ids: list[int] = []
        for k, part in enumerate(self._special_re.split(text)):
            if k % 2:
                ids.append(self.special_ids[part])
            elif part:
                ids.extend(self._sp.encode(part))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """As Meta's ``sp.decode``: no leading dummy-prefix space, control tokens dropped."""
        return str(self._sp.decode([int(i) for i in ids]))

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes, "▁" as a space, ``<0xAB>`` as byte 0xAB (StreamDecoder joins them)."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} outside the vocabulary of {self.vocab_size}")
        return self._bytes[token_id]


def _valid(token_id: int, n: int) -> int | None:
    return token_id if 0 <= token_id < n else None


def load_sentencepiece_file(data: bytes, source: str = "") -> SentencePieceTokenizer:
    """A ``tokenizer.model`` file's bytes; BOS/EOS are the model's own, BOS added to prompts."""
    return SentencePieceTokenizer(data, add_bos=True, source=source)


# --- GGUF vocabulary -> SentencePiece ModelProto --------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:  # wire type 2: length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_int(number: int, value: int) -> bytes:  # wire type 0: varint (bool, enum, int32)
    return _varint(number << 3) + _varint(value & 0xFFFFFFFFFFFFFFFF)


def _field_float(number: int, value: float) -> bytes:  # wire type 5: fixed32
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def sentencepiece_proto(
    pieces: Sequence[str],
    scores: Sequence[float],
    types: Sequence[int],
    *,
    add_dummy_prefix: bool = True,
) -> bytes:
    """A serialized sentencepiece ModelProto: BPE, byte fallback, identity normalization.

    Fields (sentencepiece_model.proto): ModelProto.pieces = 1 {piece = 1, score = 2, type = 3},
    trainer_spec = 2 {model_type = 3 (BPE = 2), vocab_size = 4, byte_fallback = 35},
    normalizer_spec = 3 {name = 1, add_dummy_prefix = 3, remove_extra_whitespaces = 4,
    escape_whitespaces = 5}. Token types share llama.cpp's numbering.
    """
    out = bytearray()
    for piece, score, kind in zip(pieces, scores, types, strict=True):
        body = _field_bytes(1, piece.encode("utf-8")) + _field_float(2, float(score))
        out += _field_bytes(1, body + _field_int(3, int(kind)))
    trainer = _field_int(3, 2) + _field_int(4, len(pieces)) + _field_int(35, 1)
    out += _field_bytes(2, trainer)
    normalizer = (
        _field_bytes(1, b"identity")
        + _field_int(3, int(add_dummy_prefix))
        + _field_int(4, 0)
        + _field_int(5, 1)
    )
    out += _field_bytes(3, normalizer)
    return bytes(out)


def load_sentencepiece_from_gguf(
    metadata: Mapping[str, Any], source: str = ""
) -> SentencePieceTokenizer:
    """The SentencePiece tokenizer a GGUF ``tokenizer.ggml.model = "llama"`` vocabulary holds."""
    where = f" in {source}" if source else ""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelLoadError(
            f"tokenizer.ggml.tokens missing{where}: the file has no usable vocabulary; "
            "re-convert it with a recent llama.cpp"
        )
    n = len(tokens)
    scores = metadata.get("tokenizer.ggml.scores") or [0.0] * n
    types = [int(t) for t in (metadata.get("tokenizer.ggml.token_type") or [NORMAL] * n)]
    known = (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)
    if len(scores) != n or len(types) != n:
        raise ModelLoadError(
            f"tokenizer.ggml.scores or token_type length differs from {n} tokens{where}: "
            "the file is corrupt; re-download or re-convert it"
        )
    if UNKNOWN not in types:
        raise ModelLoadError(
            f"the SentencePiece vocabulary{where} has no unknown token (token_type 2): "
            "the file is corrupt; re-download or re-convert it"
        )
    # sentencepiece rejects an empty or duplicate piece; keep the first, rename the rest inertly.
    seen: set[str] = set()
    pieces = []
    for i, tok in enumerate(tokens):
        name, types[i] = str(tok), types[i] if types[i] in known else NORMAL
        if not name or name in seen or (types[i] == BYTE and not _BYTE_PIECE.fullmatch(name)):
            name, types[i] = f"<unused_{i}>", UNUSED
        seen.add(name)
        pieces.append(name)
    proto = sentencepiece_proto(
        pieces,
        [float(s) for s in scores],
        types,
        add_dummy_prefix=bool(metadata.get("tokenizer.ggml.add_space_prefix", True)),
    )

    def token_id(key: str) -> int | None:
        value = metadata.get(f"tokenizer.ggml.{key}")
        return int(value) if value is not None and 0 <= int(value) < n else None

    return SentencePieceTokenizer(
        proto,
        bos_id=token_id("bos_token_id"),
        eos_id=token_id("eos_token_id"),
        add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", True)),
        extra_stop_ids=[i for i in (token_id("eot_token_id"),) if i is not None],
        source=source,
    )
