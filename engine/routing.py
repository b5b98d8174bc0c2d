"""ProfileBackend: the local engine or a remote server, whichever the profile names.

The queue drives one backend; this one hands each call to the local engine or the remote
backend by the active profile's ``backend`` key. A switch carries the conversation over (its
messages and pins), so switching between local and remote is live, like any other switch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from engine.backend import Backend, GenerationRequest, ModelInfo, Progress, TokenizeRequest
from engine.chat_format import Message
from engine.config import Profile
from engine.events import Event, Pinned, Tokens
from engine.remote.backend import RemoteBackend
from engine.startup import collector_paused

if TYPE_CHECKING:
    from engine.local import LocalBackend


class ProfileBackend:
    def __init__(self, max_loaded_models: int = 2, build_steps: bool = True) -> None:
        self.max_loaded_models = max_loaded_models
        self.build_steps = build_steps  # False: compiled steps from the cache only (`ask`)
        self._local: LocalBackend | None = None  # made by the first local load: it imports torch
        self.remote = RemoteBackend()
        self.active: Backend = self.remote  # nothing loaded yet: it holds no conversation

    @property
    def local(self) -> LocalBackend:
        if self._local is None:
            from engine.local import LocalBackend

            self._local = LocalBackend(self.max_loaded_models, self.build_steps)
        return self._local

    def load(self, profile: Profile, progress: Progress) -> ModelInfo:
        with collector_paused():  # the first local load imports torch: millions of objects
            target: Backend = self.remote if profile.backend == "openai" else self.local
            if target is self.active:
                return target.load(profile, progress)
            messages, pinned = self.active.history()
            info = target.load(profile, progress)  # a failed load leaves the old one active
        target.clear(messages)
        for index in sorted(pinned):
            target.pin(index)
        self.active = target
        return info

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[Event]:
        return self.active.generate(request, cancel)

    def clear(self, messages: Sequence[Message] = ()) -> None:
        self.active.clear(messages)

    def pin(self, index: int, pinned: bool = True) -> Pinned:
        return self.active.pin(index, pinned)

    def tokenize(self, request: TokenizeRequest) -> Tokens:
        return self.active.tokenize(request)

    def history(self) -> tuple[list[Message], set[int]]:
        return self.active.history()
