"""CPU->GPU weight offload: blocks' weights live in pinned host memory and are streamed in.

Each transformer block's offloaded weights (all of wq wk wv wo w1 w2 w3 attention_norm ffn_norm
except the excluded ones) are packed into one flat host buffer per block, so moving a block is
one large copy. The GPU holds two block-sized slots; block i computes from slot i % 2 (its
parameters are permanent views into that slot), and while it computes, block i+1 is copied
into the other slot on a side CUDA stream (double buffering). The copy of block 0 for the next
token starts while the last block, the head and the sampler run. Events order the two streams:
a slot is refilled only after the compute that read it, and read only after its copy landed.

The model knows nothing of this: placement installs a forward pre-hook on each block
(``stream_blocks``) that calls ``BlockStreamer.fetch`` before the block runs, and
``offload_metrics`` adds the streamer's counters to a reply's metrics.

With the compute device set to CPU the same machinery runs with plain copies (no streams);
the tests use that to check placement, buffer reuse and prefetch order on any machine.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from engine.args import ModelArgs
from engine.events import Done, Event, PrefillDone
from engine.model import Block, Transformer

# offload_exclusion names (config.OFFLOAD_NAMES) -> parameter paths inside a block
BLOCK_WEIGHTS = {
    "wq": "attention.wq.weight",
    "wk": "attention.wk.weight",
    "wv": "attention.wv.weight",
    "wo": "attention.wo.weight",
    "w1": "feed_forward.w1.weight",
    "w2": "feed_forward.w2.weight",
    "w3": "feed_forward.w3.weight",
    "attention_norm": "attention_norm.weight",
    "ffn_norm": "ffn_norm.weight",
}
ALIGN = 128  # elements: keeps every view 256-byte aligned in 16-bit dtypes


@dataclass(frozen=True)
class Entry:
    path: str  # inside a block, e.g. "attention.wq.weight"
    offset: int  # elements into the block's flat buffer
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def block_layout(args: ModelArgs, exclusion: frozenset[str]) -> tuple[list[Entry], int]:
    """The offloaded weights of one block in a flat buffer, and the buffer's length."""
    shapes = {n: tuple(p.shape) for n, p in Block(args, 0, device="meta").named_parameters()}
    entries, offset = [], 0
    for short, path in BLOCK_WEIGHTS.items():
        if short in exclusion:
            continue
        entry = Entry(path, offset, shapes[path])
        entries.append(entry)
        offset += -(-entry.numel // ALIGN) * ALIGN
    return entries, offset


def split_layer_name(name: str) -> tuple[int, str] | None:
    """ "layers.3.attention.wq.weight" -> (3, "attention.wq.weight"); None outside blocks."""
    if not name.startswith("layers."):
        return None
    index, _, path = name.removeprefix("layers.").partition(".")
    return int(index), path


def pinned_empty(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Page-locked host memory of exactly this size (cudaHostRegister on a plain allocation:
    torch's pinned allocator would round each block up to a power of two)."""
    t = torch.empty(numel, dtype=dtype)
    cudart = torch.cuda.cudart()
    ptr, size = t.data_ptr(), numel * t.element_size()
    if int(cudart.cudaHostRegister(ptr, size, 0)) != 0:
        return t.pin_memory()  # registration refused: the allocator's (rounded) pinned memory
    weakref.finalize(t, cudart.cudaHostUnregister, ptr)
    return t


class OffloadStore:
    """Built while loading: each offloaded weight is written once into its block's host buffer;
    the model's parameter is a view into the GPU slot that block computes from."""

    def __init__(
        self, args: ModelArgs, exclusion: frozenset[str], device: torch.device, dtype: torch.dtype
    ) -> None:
        self.device, self.dtype = device, dtype
        self.entries, self.block_numel = block_layout(args, exclusion)
        self.by_path = {e.path: e for e in self.entries}
        self.slots = [
            torch.empty(self.block_numel, dtype=dtype, device=device)
            for _ in range(min(2, args.n_layers))
        ]
        self.host: list[torch.Tensor | None] = [None] * args.n_layers
        self.pin = device.type == "cuda"

    def offloaded(self, name: str) -> bool:
        where = split_layer_name(name)
        return where is not None and where[1] in self.by_path

    def slot_of(self, layer: int) -> int:
        return layer % len(self.slots)

    def put(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """Copy ``weight`` into host memory; return the GPU view the parameter becomes."""
        where = split_layer_name(name)
        assert where is not None and where[1] in self.by_path, name
        layer, path = where
        entry = self.by_path[path]
        host = self.host[layer]
        if host is None:
            n = self.block_numel
            host = pinned_empty(n, self.dtype) if self.pin else torch.empty(n, dtype=self.dtype)
            host.zero_()  # the alignment gaps too, so copies move defined bytes
            self.host[layer] = host
        host[entry.offset : entry.offset + entry.numel].view(entry.shape).copy_(weight)
        slot = self.slots[self.slot_of(layer)]
        return slot[entry.offset : entry.offset + entry.numel].view(entry.shape)

    @property
    def block_bytes(self) -> int:
        return self.block_numel * self.dtype.itemsize


class BlockStreamer:
    """Called before each block runs (a hook, see ``stream_blocks``): makes that block's
    weights present in its slot and starts copying the next block into the other slot."""

    def __init__(self, store: OffloadStore) -> None:
        missing = [i for i, h in enumerate(store.host) if h is None]
        if missing:
            raise ValueError(f"offload store lacks the weights of block {missing[0]}")
        self.store = store
        self.host: list[torch.Tensor] = [h for h in store.host if h is not None]
        self.slots = store.slots
        self.resident: list[int | None] = [None] * len(self.slots)  # block in (or bound for) slot
        self.cuda = store.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(store.device) if self.cuda else None
        self.copied = [torch.cuda.Event() for _ in self.slots] if self.cuda else []
        self.bytes_copied = 0  # since load
        self.wait_s = 0.0  # host time spent waiting for a block's copy to land
        self.trace: deque[tuple[int, int]] = deque(maxlen=4096)  # (block, slot) per copy

    def fetch(self, layer: int) -> None:
        s = self.store.slot_of(layer)
        if self.resident[s] != layer:
            self._copy(layer, s)  # cold: the first token, or an odd block count wrapping round
        nxt = (layer + 1) % len(self.host)  # after the last block: block 0 of the next token
        ns = self.store.slot_of(nxt)
        if ns != s and self.resident[ns] != nxt:
            self._copy(nxt, ns)  # prefetch: overlaps this block's compute
        self._wait(s)

    def _copy(self, layer: int, slot: int) -> None:
        self.resident[slot] = layer
        self.bytes_copied += self.store.block_bytes
        self.trace.append((layer, slot))
        if self.copy_stream is None:
            self.slots[slot].copy_(self.host[layer])
            return
        free = torch.cuda.Event()
        free.record()  # after every kernel already queued, i.e. the last reader of this slot
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(free)
            self.slots[slot].copy_(self.host[layer], non_blocking=True)
            self.copied[slot].record(self.copy_stream)

    def _wait(self, slot: int) -> None:
        if not self.cuda:
            return
        event = self.copied[slot]
        if not event.query():
            t0 = time.perf_counter()
            event.synchronize()
            self.wait_s += time.perf_counter() - t0
        torch.cuda.current_stream().wait_event(event)


@dataclass(frozen=True)
class FetchBlock:
    """The forward pre-hook of block ``layer``: its weights are in place before it runs."""

    streamer: BlockStreamer
    layer: int

    def __call__(self, block: nn.Module, args: Any) -> None:
        self.streamer.fetch(self.layer)


def stream_blocks(model: Transformer, store: OffloadStore) -> BlockStreamer:
    """Start streaming the blocks' offloaded weights from ``store`` as the model runs."""
    streamer = BlockStreamer(store)
    for i, block in enumerate(model.layers):
        block.register_forward_pre_hook(FetchBlock(streamer, i))
    return streamer


def streamer_of(model: Transformer) -> BlockStreamer | None:
    """The streamer whose hooks run before the model's blocks (None: nothing is offloaded)."""
    if len(model.layers) == 0:
        return None
    hooks = model.layers[0]._forward_pre_hooks.values()
    return next((h.streamer for h in hooks if isinstance(h, FetchBlock)), None)


def offload_metrics(streamer: BlockStreamer | None, events: Iterator[Event]) -> Iterator[Event]:
    """generate()'s events, Done's metrics with the weight bytes streamed per decode step and
    the time spent waiting for them, both counted from the end of the prefill."""
    return events if streamer is None else _counted(streamer, events)


def _counted(streamer: BlockStreamer, events: Iterator[Event]) -> Iterator[Event]:
    copied, waited = streamer.bytes_copied, streamer.wait_s
    for event in events:
        if isinstance(event, PrefillDone):  # no forward runs between this and the first token
            copied, waited = streamer.bytes_copied, streamer.wait_s
        elif isinstance(event, Done):
            steps = event.metrics.decode_steps
            metrics = replace(
                event.metrics,
                offload_bytes_per_token=(streamer.bytes_copied - copied) / steps if steps else 0.0,
                offload_wait_s=streamer.wait_s - waited,
            )
            t = event.timings  # the waits happened inside the forwards: moved out of them
            wait = metrics.offload_wait_s
            timings = replace(
                t, decode_forward_s=max(t.decode_forward_s - wait, 0.0), offload_wait_s=wait
            )
            event = replace(event, metrics=metrics, timings=timings)
        yield event
