"""The conversation benchmark's two passes on the tiny model: counts, not timings."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.config import SamplingSettings
from engine.loaders import load_model
from engine.placement import Placement
from tui.bench.conversation import format_turns, questions, run_conversation, summary

GREEDY = SamplingSettings(temperature=0.0, repeat_penalty=1.0, seed=0)


def test_cached_pass_trims_cheaply_and_the_baseline_re_prefills(tiny_gguf: Path) -> None:
    m = load_model(
        tiny_gguf, placement=Placement(torch.device("cpu"), torch.float32), context_length=256
    )
    texts = questions(8)
    assert len({len(m.tokenizer.encode(t)) for t in texts}) == 1  # equal-length messages
    ours = run_conversation(m, texts, GREEDY, 8, cached=True)
    base = run_conversation(m, texts, GREEDY, 8, cached=False)
    assert any(t.trimmed for t in ours) and ours[-1].dropped_messages > 0
    assert all(t.computed_tokens == t.prompt_tokens for t in base)  # no cache: all of it
    for t in ours[1:]:
        assert t.computed_tokens < t.prompt_tokens / 2, t  # trimmed turns included
    table = format_turns(ours, base)
    assert len(table.splitlines()) == 2 + len(texts)
    assert summary(ours, base)["trims"] == sum(t.trimmed for t in ours)
