"""Tokenizers: one small interface, several backends, one factory.

protocol.py  the Tokenizer protocol, StreamDecoder, token types shared by the backends
bpe.py       byte-level BPE on tiktoken (GGUF "gpt2" vocabularies, tokenizer.json)
spm.py       SentencePiece (Llama 1/2 tokenizer.model, GGUF "llama" vocabularies)
files.py     Llama 3 tiktoken files and Hugging Face tokenizer.json
factory.py   load_tokenizer(path) by content, load_tokenizer_from_gguf(metadata)

The modules import only their siblings, never this package, so there is no import circle.
"""

from engine.tokenizers.bpe import PRE_TOKENIZER_PATTERNS, ByteLevelBPETokenizer
from engine.tokenizers.factory import load_tokenizer, load_tokenizer_from_gguf
from engine.tokenizers.files import TiktokenTokenizer
from engine.tokenizers.protocol import StreamDecoder, Tokenizer
from engine.tokenizers.spm import SentencePieceTokenizer

__all__ = [
    "PRE_TOKENIZER_PATTERNS",
    "ByteLevelBPETokenizer",
    "SentencePieceTokenizer",
    "StreamDecoder",
    "TiktokenTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "load_tokenizer_from_gguf",
]
