"""Parity with transformers' LlamaForCausalLM loading the same GGUF (an independent implementation).

Tolerance: both sides dequantize the file to the same float32 weights, so differences come only
from float32 summation order (SDPA vs eager attention, fused vs unfused ops). On this model the
largest logit difference measured is ~7e-5 on logits of magnitude ~40; we allow 1e-3, which
is far below the gap between a token and its runner-up that would flip a greedy choice in
practice, and well above float32 noise.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.chat_format import Message, encode_dialog
from engine.config import SamplingSettings
from engine.events import Done
from engine.loaders import LoadedModel
from engine.session import ChatSession

pytestmark = pytest.mark.slow
LOGIT_ATOL = 1e-3
GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0)
PROMPTS = [
    "Describe the history of the city of Paris in detail.",
    "Write a short story about a robot who learns to paint.",
    "Explain how photosynthesis works, step by step.",
]


def prompt_ids(model: LoadedModel, text: str) -> list[int]:
    assert model.chat_template is not None
    return encode_dialog(model.tokenizer, model.chat_template, [Message("user", text)])


@pytest.mark.parametrize("text", PROMPTS[:2])
def test_final_logits_match_transformers(
    default_model: LoadedModel, hf_model: Any, text: str
) -> None:
    ids = prompt_ids(default_model, text)
    tokens = torch.tensor([ids])
    with torch.inference_mode():
        ours = default_model.model(tokens)
        theirs = hf_model(tokens).logits.float()
    diff = (ours[0, -1] - theirs[0, -1]).abs().max().item()
    assert diff < LOGIT_ATOL, f"final-position logits differ by {diff}"
    # every position, not just the last
    assert (ours - theirs).abs().max().item() < LOGIT_ATOL


def test_batched_forward_matches_transformers(default_model: LoadedModel, hf_model: Any) -> None:
    a = prompt_ids(default_model, "Hello there!")
    b = prompt_ids(default_model, "Name a colour.")
    n = min(len(a), len(b))
    tokens = torch.tensor([a[:n], b[:n]])
    with torch.inference_mode():
        diff = (default_model.model(tokens) - hf_model(tokens).logits).abs().max().item()
    assert diff < LOGIT_ATOL


@pytest.mark.parametrize("text", PROMPTS)
def test_greedy_continuation_matches_transformers(
    default_model: LoadedModel, hf_model: Any, text: str
) -> None:
    ids = prompt_ids(default_model, text)
    session = ChatSession(default_model)
    done = [e for e in session.send(text, GREEDY, 40) if isinstance(e, Done)][0]
    with torch.inference_mode():
        out = hf_model.generate(
            torch.tensor([ids]),
            do_sample=False,
            max_new_tokens=40,
            eos_token_id=sorted(default_model.tokenizer.stop_ids),
            pad_token_id=2,
        )
    theirs = [t for t in out[0, len(ids) :].tolist() if t not in default_model.tokenizer.stop_ids]
    assert len(done.token_ids) >= 32, "prompt should give a reply of at least 32 tokens"
    assert done.token_ids == theirs
