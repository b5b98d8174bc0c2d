"""Tokenizer files by content, SentencePiece (file and GGUF), Llama 3 tiktoken, HF tokenizer.json.

Every artifact is built here: a SentencePiece BPE trained on a few lines, a tiktoken rank file
written by hand, a tokenizer.json trained by the `tokenizers` library. Each is checked against
the library that reads it natively.
"""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path
from typing import Any

import pytest
import sentencepiece
import tiktoken

from engine.errors import ModelLoadError
from engine.tokenizers import StreamDecoder, Tokenizer, load_tokenizer, load_tokenizer_from_gguf
from engine.tokenizers.files import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS, TiktokenTokenizer
from engine.tokenizers.spm import SentencePieceTokenizer

CORPUS = [
    "Hello world, the quick brown fox jumps over the lazy dog.",
    "  leading spaces and   multiple   spaces in between",
    "naïve café résumé, the world says hello",
    "line one\nline two\n\nend of the lines",
    "12345 numbers 3.14 and more numbers",
    "[INST] instructions [/INST] answers and system prompts",
]
TRICKY = [
    "Hello world",
    " leading space",
    "   three leading",
    "multiple    spaces   here  ",
    "emoji 😀👍🏽 and 東京, Zürich",
    "new\nlines\n\n  indented\n",
    "\ttab\r\nwindows",
    "",
    " ",
    "\n",
    "<s> text </s> <unk>",
]


def train_spm(
    vocab_size: int = 400, add_dummy_prefix: bool = True, user_defined: tuple[str, ...] = ()
) -> bytes:
    """A tiny Llama-2-like SentencePiece model: BPE, byte fallback, no normalization."""
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 10),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix,
        user_defined_symbols=list(user_defined),
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        minloglevel=2,
    )
    return out.getvalue()


def spm_gguf_metadata(proto: bytes, user_defined: tuple[str, ...] = ()) -> dict[str, Any]:
    """What llama.cpp's converter writes for a SentencePiece vocabulary."""
    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    n = sp.get_piece_size()

    def kind(i: int) -> int:
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        if sp.is_byte(i):
            return 6
        if sp.id_to_piece(i) in user_defined:
            return 4
        return 5 if sp.is_unused(i) else 1

    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": [kind(i) for i in range(n)],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }


# 256 single bytes, then a few merges: enough to exercise the Llama 3 split pattern.
TIKTOKEN_MERGES = [b"he", b"ll", b"llo", b"hello", b" w", b"or", b" wor", b" world", b"ys", b"\n\n"]
TIKTOKEN_MERGES += [b"st", b"em", b"syst", b"system", b"us", b"er", b"user", b"Hi", b"as", b"ass"]


def tiktoken_ranks() -> dict[bytes, int]:
    ranks = {bytes([b]): b for b in range(256)}
    for token in TIKTOKEN_MERGES:
        ranks[token] = len(ranks)
    return ranks


def write_tiktoken_file(path: Path) -> Path:
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in tiktoken_ranks().items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def spm_proto() -> bytes:
    return train_spm()


@pytest.fixture(scope="module")
def spm_file(spm_proto: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spm") / "weights.bin"  # the name says nothing on purpose
    path.write_bytes(spm_proto)
    return path


@pytest.fixture(scope="module")
def sp_ref(spm_proto: bytes) -> Any:
    return sentencepiece.SentencePieceProcessor(model_proto=spm_proto)


# --- SentencePiece ---------------------------------------------------------------------------


def test_sentencepiece_file_matches_sentencepiece(spm_file: Path, sp_ref: Any) -> None:
    tok = load_tokenizer(spm_file)
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == (
        sp_ref.get_piece_size(),
        1,
        2,
        True,
    )
    assert tok.stop_ids == frozenset({2})
    for text in TRICKY:
        assert tok.encode(text, allow_special=False) == sp_ref.encode(text)
        assert tok.decode(tok.encode(text, allow_special=False)) == sp_ref.decode(
            sp_ref.encode(text)
        )
    assert tok.encode("") == []  # no BOS from encode itself; the chat format adds it


def test_sentencepiece_special_text(spm_file: Path, sp_ref: Any) -> None:
    tok = load_tokenizer(spm_file)
    # Control text is a token only when allowed; text after it gets its own dummy prefix.
    assert tok.encode("<s>hi</s>") == [1, *sp_ref.encode("hi"), 2]
    assert 1 not in tok.encode("<s>hi", allow_special=False)


def test_sentencepiece_token_bytes_and_stream(spm_file: Path, sp_ref: Any) -> None:
    tok = load_tokenizer(spm_file)
    word = sp_ref.piece_to_id("▁the")
    assert word != 0 and tok.token_bytes(word) == b" the"
    assert tok.token_bytes(sp_ref.piece_to_id("<0xF0>")) == b"\xf0"
    text = "😀 東京 ok"
    ids = tok.encode(text)
    assert any(sp_ref.is_byte(i) for i in ids)  # the emoji needs byte fallback
    stream = StreamDecoder(tok)
    deltas = [stream.push(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == " " + text  # the dummy prefix; decode() drops it, as sp does
    assert tok.decode(ids) == text
    with pytest.raises(ValueError):
        tok.token_bytes(tok.vocab_size)


def test_gguf_sentencepiece_matches_the_model(spm_proto: bytes, sp_ref: Any) -> None:
    tok = load_tokenizer_from_gguf(spm_gguf_metadata(spm_proto), "spm.gguf")
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, True)
    fuzz = ["".join(CORPUS)[k : k + 37] for k in range(0, 300, 7)]
    for text in [*TRICKY, *CORPUS, *fuzz]:
        assert tok.encode(text, allow_special=False) == sp_ref.encode(text), text
    assert tok.decode(sp_ref.encode("emoji 😀 x")) == "emoji 😀 x"


def test_gguf_sentencepiece_fuzz_and_user_defined() -> None:
    proto = train_spm(user_defined=("<tool>",))
    ref = sentencepiece.SentencePieceProcessor(model_proto=proto)
    tok = load_tokenizer_from_gguf(spm_gguf_metadata(proto, ("<tool>",)))
    pool = [
        *"abc xyz\n\t.,!'",
        "  ",
        "the",
        "ll",
        "é",
        "東",
        "😀",
        "👍🏽",
        "<tool>",
        "<s>",
        "\u00a0",
    ]
    rng = random.Random(0)
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 30))) for _ in range(300)]
    for text in texts:
        assert tok.encode(text, allow_special=False) == ref.encode(text), text
    assert ref.piece_to_id("<tool>") in tok.encode("a<tool>b", allow_special=False)


def test_gguf_sentencepiece_without_space_prefix() -> None:
    proto = train_spm(add_dummy_prefix=False)
    ref = sentencepiece.SentencePieceProcessor(model_proto=proto)
    meta = {**spm_gguf_metadata(proto), "tokenizer.ggml.add_space_prefix": False}
    tok = load_tokenizer_from_gguf(meta)
    for text in [*TRICKY, *CORPUS]:
        assert tok.encode(text, allow_special=False) == ref.encode(text), text
    assert tok.token_bytes(tok.encode("hello", allow_special=False)[0])[:1] != b" "


def test_gguf_sentencepiece_without_unknown_token_fails(spm_proto: bytes) -> None:
    meta = spm_gguf_metadata(spm_proto)
    types = [1 if t == 2 else t for t in meta["tokenizer.ggml.token_type"]]
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer_from_gguf({**meta, "tokenizer.ggml.token_type": types}, "m.gguf")
    assert "m.gguf" in str(err.value) and "\n" not in str(err.value)


# --- Llama 3 tiktoken ------------------------------------------------------------------------


def test_llama3_tiktoken_file(tmp_path: Path) -> None:
    tok = load_tokenizer(write_tiktoken_file(tmp_path / "vocab"))
    assert isinstance(tok, TiktokenTokenizer)
    base = 256 + len(TIKTOKEN_MERGES)
    assert tok.vocab_size == base + 256
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (base, base + 1, True)
    assert tok.stop_ids == frozenset({base + 1, base + 8, base + 9})  # end_of_text, eom, eot
    named = {t: base + i for i, t in enumerate(LLAMA3_SPECIAL_TOKENS)}
    assert named["<|start_header_id|>"] == base + 6 and named["<|eot_id|>"] == base + 9
    assert LLAMA3_SPECIAL_TOKENS[-1] == "<|reserved_special_token_247|>"
    ref = tiktoken.Encoding(
        "ref", pat_str=LLAMA3_PATTERN, mergeable_ranks=tiktoken_ranks(), special_tokens=named
    )
    for text in [*TRICKY, *CORPUS, "hello world<|eot_id|>", "I'LL SEE 12345"]:
        assert tok.encode(text, allow_special=False) == ref.encode(text, disallowed_special=())
        assert tok.encode(text) == ref.encode(text, allowed_special="all")
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("hello world") == [259, 263]
    assert tok.token_bytes(base + 9) == b"<|eot_id|>"


# --- HF tokenizer.json -----------------------------------------------------------------------


def write_hf_tokenizer(path: Path, split: str | None) -> Path:
    """A byte-level BPE tokenizer.json; `split`: a Split regex (Llama 3 style) or None (GPT-2)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    hf = Tokenizer(models.BPE(ignore_merges=True))
    if split is None:
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    hf.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(CORPUS * 10, trainer=trainer)
    hf.add_tokens(["<tool>"])  # not special: matched whole, always
    bos = hf.token_to_id("<|begin_of_text|>")
    hf.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    hf.save(str(path))
    return path


@pytest.mark.parametrize("split", [LLAMA3_PATTERN, None], ids=["llama3-split", "gpt2"])
def test_hf_tokenizer_json_matches_tokenizers(tmp_path: Path, split: str | None) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    path = write_hf_tokenizer(tmp_path / "tok", split)
    ref = HFTokenizer.from_file(str(path))
    tok: Tokenizer = load_tokenizer(path)
    bos = ref.token_to_id("<|begin_of_text|>")
    assert (tok.bos_id, tok.add_bos) == (bos, True)  # from the post-processor template
    assert tok.eos_id == ref.token_to_id("<|end_of_text|>")
    assert ref.token_to_id("<|eot_id|>") in tok.stop_ids
    for text in [*TRICKY, *CORPUS, "a<|eot_id|>b <tool> x", "I'LL SEE 12345"]:
        ids = tok.encode(text)
        assert [tok.bos_id, *ids] == ref.encode(text).ids, text
        assert tok.decode(ids) == text


def test_hf_tokenizer_json_unsupported(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    path = tmp_path / "wordlevel.json"
    HFTokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path))
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer(path)
    assert "wordlevel.json" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage", b"just some text\n", b"{not json"])
def test_unknown_file_fails_in_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer(path)
    assert "tokenizer.model" in str(err.value) and "\n" not in str(err.value)


def test_corrupt_sentencepiece_fails_in_one_line(tmp_path: Path, spm_proto: bytes) -> None:
    path = tmp_path / "cut.model"
    path.write_bytes(spm_proto[: len(spm_proto) // 2])
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer(path)
    assert "cut.model" in str(err.value) and "\n" not in str(err.value)


# A vocabulary larger than the model's embedding: tests/engine/test_formats_e2e.py.
