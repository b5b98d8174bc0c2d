"""One factory: the tokenizer a file holds (recognized by content, never by its name) or the
one a GGUF file's metadata describes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.errors import ModelLoadError
from engine.tokenizers.bpe import load_bpe_from_gguf
from engine.tokenizers.files import TiktokenTokenizer, load_hf_tokenizer_json, tiktoken_ranks
from engine.tokenizers.protocol import Tokenizer
from engine.tokenizers.spm import load_sentencepiece_file, load_sentencepiece_from_gguf


def load_tokenizer_from_gguf(metadata: Mapping[str, Any], source: str = "") -> Tokenizer:
    """The tokenizer a GGUF file's metadata describes; `source` names the file in errors."""
    model = metadata.get("tokenizer.ggml.model")
    if model == "llama":
        return load_sentencepiece_from_gguf(metadata, source)
    if model == "gpt2":
        return load_bpe_from_gguf(metadata, source)
    where = f" in {source}" if source else ""
    raise ModelLoadError(
        f"unsupported tokenizer.ggml.model {model!r}{where}: "
        "supported are 'gpt2' (byte-level BPE) and 'llama' (SentencePiece)"
    )


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizer file, by content: SentencePiece .model, Llama 3 tiktoken, tokenizer.json."""
    path = path.expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read tokenizer file {path}: {exc.strerror or exc}") from None
    if data.lstrip()[:1] == b"{":
        try:
            parsed = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            parsed = None
        if isinstance(parsed, dict) and "model" in parsed:
            return load_hf_tokenizer_json(parsed, path.name)
    ranks = tiktoken_ranks(data)
    if ranks is not None:
        return TiktokenTokenizer(ranks)
    if data[:1] == b"\x0a":  # protobuf field 1 (pieces), length-delimited: a SentencePiece model
        return load_sentencepiece_file(data, path.name)
    raise ModelLoadError(
        f"{path.name} is not a tokenizer llama-tui reads: expected a SentencePiece "
        "tokenizer.model, a Llama 3 tiktoken file or a byte-level BPE tokenizer.json"
    )
