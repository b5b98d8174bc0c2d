"""Offload machinery with the compute device set to CPU: placement plan, exclusions, the two
reused slot buffers, prefetch order, bytes per token, and logits equal to the resident model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.config import SamplingSettings
from engine.errors import UserError
from engine.events import Done
from engine.generate import decode_one_token, generate, prefill
from engine.kv_cache import KVCache
from engine.loaders import LoadedModel, load_model
from engine.offload import ALIGN, BLOCK_WEIGHTS, BlockStreamer, block_layout, offload_metrics
from engine.placement import Placement, resolve_placement
from engine.session import ChatSession
from tests.gguf_writer import write_tiny_gguf

CPU = torch.device("cpu")
F32 = torch.float32
ATTENTION = frozenset({"wq", "wk", "wv", "wo", "attention_norm"})
FEED_FORWARD = frozenset({"w1", "w2", "w3", "ffn_norm"})


def load(path: Path, **kw: object) -> LoadedModel:
    return load_model(path, placement=Placement(CPU, F32, **kw), context_length=128)  # type: ignore[arg-type]


def streamer(m: LoadedModel) -> BlockStreamer:
    s = m.streamer
    assert isinstance(s, BlockStreamer)
    return s


def logits_of(m: LoadedModel, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    a = m.args
    cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 64, dtype=F32, device=CPU)
    first = prefill(m.model, cache, ids, 0)
    return first, decode_one_token(m.model, cache, int(first.argmax()))


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "four.gguf", n_layers=4)


@pytest.mark.parametrize("exclusion", [frozenset(), frozenset({"w1", "w2", "w3"}), ATTENTION])
def test_offloaded_logits_equal_resident_exactly(four_layers: Path, exclusion: frozenset) -> None:
    ids = [1, 5, 9, 200, 33, 7, 81]
    resident = logits_of(load(four_layers), ids)
    offloaded = logits_of(load(four_layers, offload=True, offload_exclusion=exclusion), ids)
    for a, b in zip(resident, offloaded, strict=True):
        assert torch.equal(a, b)


def test_greedy_generation_matches_resident(four_layers: Path) -> None:
    greedy = SamplingSettings(temperature=0.0, repeat_penalty=1.0)

    def tokens(m: LoadedModel) -> list[int]:
        a = m.args
        cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 64, dtype=F32, device=CPU)
        events = list(generate(m.model, m.tokenizer, cache, [1, 2, 3, 4], greedy, 12))
        return events[-1].token_ids  # type: ignore[union-attr]

    assert tokens(load(four_layers, offload=True)) == tokens(load(four_layers))


def test_plan_places_offloaded_weights_in_two_reused_slots(four_layers: Path) -> None:
    m = load(four_layers, offload=True, offload_exclusion=frozenset({"w1", "w2", "w3"}))
    s = streamer(m)
    store = s.store
    assert len(store.slots) == 2 and all(h is not None for h in store.host)
    # one flat buffer per block holds exactly the offloaded weights, each 128-aligned
    entries, numel = block_layout(m.args, frozenset({"w1", "w2", "w3"}))
    assert [e.path for e in entries] == [
        BLOCK_WEIGHTS[n] for n in ("wq", "wk", "wv", "wo", "attention_norm", "ffn_norm")
    ]
    assert all(e.offset % ALIGN == 0 for e in entries) and store.block_numel == numel
    for i, block in enumerate(m.model.layers):
        slot = store.slots[i % 2]
        lo, hi = slot.data_ptr(), slot.data_ptr() + slot.numel() * slot.element_size()
        params = dict(block.named_parameters())
        for path in params:
            inside = lo <= params[path].data_ptr() < hi
            assert inside == (path in store.by_path), path  # offloaded <=> a view of its slot
    slot_ptrs = [t.data_ptr() for t in store.slots]
    logits_of(m, [1, 2, 3])
    assert [t.data_ptr() for t in store.slots] == slot_ptrs  # reused, never reallocated


def test_prefetch_order_and_bytes_per_token(four_layers: Path) -> None:
    m = load(four_layers, offload=True)
    s = streamer(m)
    a = m.args
    cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 64, dtype=F32, device=CPU)
    logits = prefill(m.model, cache, [1, 2, 3], 0)
    # first pass: block 0 cold, then each fetch queues the next block into the other slot, and
    # the last block queues block 0 for the next token
    assert list(s.trace) == [(0, 0), (1, 1), (2, 0), (3, 1), (0, 0)]
    before, copies = s.bytes_copied, len(s.trace)
    decode_one_token(m.model, cache, int(logits.argmax()))
    assert list(s.trace)[copies:] == [(1, 1), (2, 0), (3, 1), (0, 0)]  # block 0 was already in
    assert s.bytes_copied - before == a.n_layers * s.store.block_bytes


def test_odd_block_count_reloads_block_zero(tmp_path: Path) -> None:
    m = load(write_tiny_gguf(tmp_path / "three.gguf", n_layers=3), offload=True)
    s = streamer(m)
    logits_of(m, [1, 2])
    # blocks 2 and 0 share slot 0, so block 0 cannot be prefetched behind block 2; block 1
    # never left slot 1, so it is not copied again
    assert list(s.trace) == [(0, 0), (1, 1), (2, 0), (0, 0), (2, 0)]


def test_generate_reports_offload_bytes_per_token(four_layers: Path) -> None:
    m = load(four_layers, offload=True)
    a = m.args
    cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, 64, dtype=F32, device=CPU)
    greedy = SamplingSettings(temperature=0.0, repeat_penalty=1.0)
    events = generate(m.model, m.tokenizer, cache, [1, 2, 3], greedy, 6)
    done = list(offload_metrics(m.streamer, events))[-1]
    metrics = done.metrics  # type: ignore[union-attr]
    assert metrics.offload_bytes_per_token == a.n_layers * streamer(m).store.block_bytes
    assert metrics.as_dict()["offload_gb_s"] > 0


def test_a_session_reply_reports_offload_bytes_per_token(four_layers: Path) -> None:
    m = load(four_layers, offload=True)
    greedy = SamplingSettings(temperature=0.0, repeat_penalty=1.0)
    done = list(ChatSession(m).complete("one two three", greedy, 6))[-1]
    assert isinstance(done, Done) and done.metrics.decode_steps > 0
    assert done.metrics.offload_bytes_per_token == m.args.n_layers * streamer(m).store.block_bytes


def test_excluding_everything_means_no_streaming(four_layers: Path) -> None:
    m = load(four_layers, offload=True, offload_exclusion=frozenset(BLOCK_WEIGHTS))
    assert m.streamer is None


def test_offload_without_cuda_is_a_one_line_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match=r"offload = true .* no CUDA GPU: set offload = false"):
        resolve_placement("auto", "auto", offload=True)
    with pytest.raises(UserError, match=r"device 'cuda:3': no CUDA GPU"):
        resolve_placement("cuda:3", "auto")


def test_quantization_without_bitsandbytes_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    with pytest.raises(UserError, match=r"needs bitsandbytes, which is not installed: pip install"):
        resolve_placement("cpu", "float32", quantization="int8")
