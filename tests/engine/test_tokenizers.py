"""The tiktoken-backed byte-level BPE against transformers, on the embedded SmolLM2 GGUF."""

from __future__ import annotations

import random
from typing import Any

import pytest

from engine.errors import ModelLoadError
from engine.tokenizers import (
    PRE_TOKENIZER_PATTERNS,
    StreamDecoder,
    Tokenizer,
    load_tokenizer_from_gguf,
)

pytestmark = pytest.mark.slow

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé façade Ångström, Zürich, São Paulo",
    "東京は日本の首都です。中文测试，你好世界！",
    "مرحبا بالعالم، كيف حالك؟",
    "Emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇺🇸 heart ❤️ done",
    "def f(x):\n    if x:\n\treturn x ** 2  # tab\n    return None\n",
    "a   1",
    "multiple    spaces   between\n\n\nnewlines   \n  trailing   ",
    "   leading spaces",
    "trailing spaces   ",
    "12345 3.14 2024 1,000,000 v2.0.1 x=42",
    " 2024",
    "\t\t9\n 7",
    "I'm sure they'll say it's fine; don't you think? We've SEEN IT'S",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more <repo_name>x",
    "<|im_start",
    "",
    " ",
    "\n",
    "combining é and precomposed é, nbsp\u00a0here, ideographic\u3000space",
    "fullwidth １２３ arabic-indic ٣٤ superscript ² roman Ⅻ half ½",
    "\r\n windows\r\nline endings\r\n",
]

# Random strings drawn from awkward pieces. 0x04 etc. are left out: SmolLM2's vocabulary lacks
# those bytes; see test_bytes_missing_from_vocab_are_dropped.
FUZZ_POOL = [
    *"abcXYZ  \t\n\r0123456789'sltdmrev.,;!?-_()[]{}<>|/\\\"",
    *"éñüçßøå中文字ال",
    "\u0301",
    "\u00a0",
    "\u2028",
    "\u3000",
    "٣",
    "１",
    "²",
    "Ⅻ",
    "½",
    "😀",
    "👍🏽",
    "\u200d",
    "\ufe0f",
    "🇺🇸",
    "👨‍👩‍👧",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "'S",
    "'LL",
    "   ",
    "\n\n",
]


def fuzz_strings(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(FUZZ_POOL) for _ in range(rng.randint(1, 40))) for _ in range(count)]


def test_golden_ids(tok: Tokenizer) -> None:
    assert tok.encode("Hello, world!") == [19556, 28, 905, 17]
    assert tok.encode("The year 2024 had 366 days.") == [
        504,
        713,
        216,
        34,
        32,
        34,
        36,
        761,
        216,
        35,
        38,
        38,
        2009,
        30,
    ]
    assert tok.encode("a   1") == [81, 333, 33]  # the run before a digit stays whole
    assert tok.encode("<|im_start|>user\nhi<|im_end|>") == [1, 4093, 198, 6004, 2]


def test_vocabulary_facts(tok: Tokenizer) -> None:
    assert tok.vocab_size == 49152
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)
    assert {0, 2} <= tok.stop_ids and 1 not in tok.stop_ids
    assert tok.token_bytes(1) == b"<|im_start|>"
    assert tok.token_bytes(905) == b" world"
    with pytest.raises(ValueError):
        tok.token_bytes(tok.vocab_size)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(tok: Tokenizer, hf_tok: Any, text: str) -> None:
    assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)
    plain = hf_tok.encode(text, add_special_tokens=False, split_special_tokens=True)
    assert tok.encode(text, allow_special=False) == plain


def test_special_tokens_as_text(tok: Tokenizer) -> None:
    ids = tok.encode("<|im_end|>", allow_special=False)
    assert 2 not in ids and tok.decode(ids) == "<|im_end|>"


def test_every_vocabulary_token_matches_transformers(tok: Tokenizer, hf_tok: Any) -> None:
    # Where tiktoken's merge rule (lowest-ranked concatenation, whole piece first) could differ
    # from HF's (listed pair), a token's own text would show it.
    texts = [tok.decode([i]) for i in range(tok.vocab_size)]
    texts = [t for t in texts if "\ufffd" not in t]
    ours = [tok.encode(t) for t in texts]
    theirs = hf_tok(texts, add_special_tokens=False)["input_ids"]
    mismatched = [(t, a, b) for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    assert mismatched == []


def test_fuzz_matches_transformers(tok: Tokenizer, hf_tok: Any) -> None:
    texts = fuzz_strings(3000)
    theirs = hf_tok(texts, add_special_tokens=False)["input_ids"]
    mismatched = [
        (t, a, b) for t, a, b in zip(texts, map(tok.encode, texts), theirs, strict=True) if a != b
    ]
    assert mismatched == []


def test_bytes_missing_from_vocab_are_dropped(tok: Tokenizer, hf_tok: Any) -> None:
    # SmolLM2 has no token for byte 0x04 (nor 0x06, 0x13, 0xf1, ...): dropped, as transformers
    # and llama.cpp do. (Inside one piece transformers then merges the neighbours, "-\x04)" ->
    # "-)"; we keep them apart, like llama.cpp.)
    for text in ["\x04", "a\x04b", "x \x1d\x13 y"]:
        assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)
    assert tok.encode("\x04") == []


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trip(tok: Tokenizer, hf_tok: Any, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(ids) == hf_tok.decode(ids)


def test_stream_decoder_yields_whole_characters(tok: Tokenizer) -> None:
    text = "naïve 東京 😀👍🏽 👨‍👩‍👧 ok"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens split a character
    stream = StreamDecoder(tok)
    deltas = [stream.push(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text == tok.decode(ids)


def test_stream_decoder_flushes_a_cut_character(tok: Tokenizer) -> None:
    ids = tok.encode(" 😀")  # [' \xf0\x9f\x98', '\x80']
    stream = StreamDecoder(tok)
    assert stream.push(ids[0]) == " "  # the space now, the emoji's first 3 bytes held back
    assert stream.flush() == "\ufffd"  # cut off: replaced, as decode() does
    assert tok.decode(ids[:1]) == " \ufffd"
    assert stream.push(ids[0]) + stream.push(ids[1]) + stream.flush() == " 😀"  # reset by flush


def test_merge_order_differing_from_id_order(tok: Tokenizer, metadata: dict[str, Any]) -> None:
    # Reverse the ids of all merge results: ranks then need the rank -> id table.
    tokens = list(metadata["tokenizer.ggml.tokens"])
    first_merged = 252  # 17 control tokens + 235 single bytes
    perm = list(range(first_merged)) + list(range(len(tokens) - 1, first_merged - 1, -1))
    shuffled = {**metadata, "tokenizer.ggml.tokens": [tokens[perm[i]] for i in range(len(tokens))]}
    other = load_tokenizer_from_gguf(shuffled)
    for text in [*TEXTS, "a\x04b", *fuzz_strings(300, seed=1)]:
        assert other.encode(text) == [perm[i] for i in tok.encode(text)]
        assert other.decode(other.encode(text)) == tok.decode(tok.encode(text))


def test_user_defined_tokens_always_match_whole(metadata: dict[str, Any]) -> None:
    types = list(metadata["tokenizer.ggml.token_type"])
    types[3] = 4  # <repo_name> as USER_DEFINED
    other = load_tokenizer_from_gguf({**metadata, "tokenizer.ggml.token_type": types})
    assert 3 in other.encode("a<repo_name>b", allow_special=False)
    assert 1 not in other.encode("<|im_start|>", allow_special=False)


@pytest.mark.parametrize("pre", ["gpt2", "llama-bpe", "qwen2"])
def test_split_patterns_match_transformers(pre: str, hf_tok: Any, metadata: dict[str, Any]) -> None:
    """Same vocabulary, other pre-tokenizers: our tiktoken regexes against HF's Split."""
    from tokenizers import Regex, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    ref = HFTokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    ref.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRE_TOKENIZER_PATTERNS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    ours = load_tokenizer_from_gguf({**metadata, "tokenizer.ggml.pre": pre})
    texts = [*TEXTS, *fuzz_strings(1000, seed=2)]
    theirs = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    mismatched = [
        (t, a, b) for t, a, b in zip(texts, map(ours.encode, texts), theirs, strict=True) if a != b
    ]
    assert mismatched == []


def test_gpt2_pattern_is_transformers_bytelevel(hf_tok: Any, metadata: dict[str, Any]) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers

    ref = HFTokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ours = load_tokenizer_from_gguf({**metadata, "tokenizer.ggml.pre": "gpt2"})
    texts = [*TEXTS, *fuzz_strings(500, seed=3)]
    assert [ours.encode(t) for t in texts] == [
        e.ids for e in ref.encode_batch(texts, add_special_tokens=False)
    ]


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"tokenizer.ggml.model": "llama"}, "SentencePiece"),
        ({"tokenizer.ggml.model": "bert"}, "'bert'"),
        ({"tokenizer.ggml.pre": "foo"}, "'foo'"),
        ({"tokenizer.ggml.merges": None}, "merges"),
        ({"tokenizer.ggml.merges": ["Ġ zzzq"]}, "Ġ zzzq"),
        ({"tokenizer.ggml.token_type": [1, 3]}, "token_type"),
    ],
)
def test_unsupported_vocabularies_fail_in_one_line(
    metadata: dict[str, Any], patch: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer_from_gguf({**metadata, **patch}, "model.gguf")
    message = str(err.value)
    assert needle in message and "model.gguf" in message and "\n" not in message
