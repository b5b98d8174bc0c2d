"""The small interface the engine queue drives (engine/local.py and engine/remote implement it).

A backend owns one conversation and the models it runs it on. The queue calls it from its one
engine thread only, so a backend needs no locks. A remote backend (an OpenAI-compatible server)
implements the same calls: ``load``, ``generate``, ``clear`` and ``pin``; cancel is the
``threading.Event`` handed to ``generate`` and checked once per decoded token. Nothing here
imports torch: a remote profile's process never loads it (about 2-3 s of start).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from engine.chat_format import Message
from engine.config import Profile, SamplingSettings
from engine.events import Event, Pinned, Tokens

Progress = Callable[[int, int], None]  # (units done, units total)
RequestKind = Literal["chat", "regenerate", "edit", "complete", "dialog", "continue"]


@dataclass(frozen=True)
class GenerationRequest:
    kind: RequestKind  # chat = a user turn; regenerate = answer the last user turn again;
    # edit = replace user message `index` with `text`, drop what followed, answer it;
    # complete = raw completion of `text` (no template, no history); dialog = answer `messages`
    # as given, system message included, untrimmed (`serve`: the client owns the history);
    # continue = extend the last reply where it stopped (length, or stopped by the user)
    text: str = ""
    sampling: SamplingSettings = SamplingSettings()  # read per request: edits apply at once
    max_new_tokens: int = 512
    index: int = -1  # edit: which message of the conversation
    messages: tuple[Message, ...] = ()  # dialog: the whole conversation, the last one a user's


@dataclass(frozen=True)
class TokenizeRequest:
    """Token ids of raw `text`, or of `messages` as the chat format encodes them."""

    text: str = ""
    messages: tuple[Message, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    """What actually runs, read off the loaded model (not the settings that asked for it)."""

    name: str  # file name shown to the user
    path: str
    device: str
    dtype: str
    context_length: int  # tokens the conversation's KV cache holds
    reused: bool  # True = taken from the model cache, nothing was read from disk
    load_s: float  # seconds this load took (0 when reused)
    quantization: str = "none"  # e.g. "int8 (bitsandbytes, 210 layers)", "GGUF 4-bit, int4 kernel"
    offload: str = "off"  # "off", or what streams: "blocks → cuda:0 (except w1, w2)"
    weights: str = ""  # how the weights are held, as the loader says ("bfloat16", "int8 …")
    weights_cache: str = "off"  # the prepared-weights cache: "read", "written", "not written: …"
    models: tuple[str, ...] = ()  # remote: every model id the server offers (the app's picker)


class Backend(Protocol):
    def load(self, profile: Profile, progress: Progress) -> ModelInfo:
        """Make `profile` the active one, loading weights only when they changed."""
        ...

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[Event]:
        """Run one request on the active conversation; stops within one token of `cancel`."""
        ...

    def clear(self, messages: Sequence[Message] = ()) -> None:
        """Start a new conversation, or go on with `messages` (a saved one); cached prompt
        prefixes may still be reused."""
        ...

    def pin(self, index: int, pinned: bool = True) -> Pinned:
        """Keep message `index` in context whatever trimming drops (pinned=False lets it go)."""
        ...

    def tokenize(self, request: TokenizeRequest) -> Tokens:
        """Token ids as the active model counts them (a remote server may only estimate)."""
        ...

    def history(self) -> tuple[list[Message], set[int]]:
        """The conversation's messages and pinned indexes (a backend switch carries them)."""
        ...
