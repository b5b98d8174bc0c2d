"""LocalBackend: the pure-PyTorch engine behind the queue's Backend interface (engine/backend.py).

An LRU cache of loaded models and one ChatSession; the queue calls it from its engine thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import replace

from engine.backend import GenerationRequest, ModelInfo, Progress, TokenizeRequest
from engine.chat_format import Message, encode_raw
from engine.config import WEIGHT_KEYS, Profile, weights_key
from engine.errors import UserError
from engine.events import Done, Event, Failed, Pinned, Tokens, TurnStarted
from engine.loaders import LoadedModel, load_profile_model, switched_to
from engine.placement import resolve_device, resolve_dtype
from engine.session import ChatSession


def model_info(loaded: LoadedModel, reused: bool) -> ModelInfo:
    """The ModelInfo of a loaded model: its layers and streamer, counted where they are."""
    model = loaded.model
    bnb = sum(1 for m in model.modules() if type(m).__module__.startswith("bitsandbytes"))
    if bnb:
        quantization = f"{loaded.placement.quantization} (bitsandbytes, {bnb} layers)"
    elif loaded.packed_4bit:
        quantization = f"GGUF 4-bit, int4 kernel ({loaded.packed_4bit} matrices)"
    else:
        quantization = "none"
    offload = "off"
    if loaded.streamer is not None:
        kept = sorted(loaded.placement.offload_exclusion)
        offload = f"blocks → {loaded.device}" + (f" (except {', '.join(kept)})" if kept else "")
    return ModelInfo(
        name=loaded.path.name,
        path=str(loaded.path),
        device=str(loaded.device),
        dtype=(
            "bf16 matmuls, fp32 rest"
            if loaded.packed_4bit
            else str(loaded.dtype).removeprefix("torch.")
        ),
        context_length=loaded.context_length,
        reused=reused,
        load_s=0.0 if reused else loaded.load_s,
        quantization=quantization,
        offload=offload,
        weights=loaded.weights,
        weights_cache="off" if reused else loaded.weights_cache,
    )


ModelKey = tuple[object, ...]


def model_key(profile: Profile) -> ModelKey:
    """What a loaded model depends on (config.WEIGHT_KEYS), with "auto" device and dtype
    resolved, so "auto" and the dtype it picks share one cached model."""
    key = dict(zip(WEIGHT_KEYS, weights_key(profile), strict=True))
    device = resolve_device(profile.device)
    key.update(device=str(device), dtype=str(resolve_dtype(profile.dtype, device)))
    return tuple(key.values())


class LocalBackend:
    """Pure-PyTorch backend: an LRU cache of loaded models and one ChatSession."""

    def __init__(self, max_loaded_models: int = 2, build_steps: bool = True) -> None:
        if max_loaded_models < 1:
            raise UserError(f"max_loaded_models = {max_loaded_models}: must be >= 1")
        self.max_loaded_models = max_loaded_models
        self.build_steps = build_steps  # False: compiled steps from the cache only (one reply)
        self.models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()  # oldest first
        self.session: ChatSession | None = None
        self.profile: Profile | None = None
        self.loads = 0  # models read from disk so far (tests and the UI read it)

    def _model(self, profile: Profile, progress: Progress) -> tuple[LoadedModel, bool]:
        key = model_key(profile)
        loaded = self.models.get(key)
        if loaded is not None:
            wanted = min(profile.context_length, loaded.args.max_seq_len)
            if wanted <= loaded.context_length:  # its rope tables cover the context asked for
                self.models.move_to_end(key)
                if self.build_steps:
                    switched_to(loaded, profile)  # drafts on now: their verify step
                return replace(loaded, context_length=wanted), True
            del self.models[key]
        self._evict(self.max_loaded_models - 1)
        loaded = load_profile_model(profile, progress, self.build_steps)
        self.loads += 1
        self.models[key] = loaded
        return loaded, False

    def _evict(self, keep: int) -> None:
        """Drop least recently used models until `keep` remain (the session may hold one)."""
        while len(self.models) > max(keep, 0):
            self.models.popitem(last=False)

    def load(self, profile: Profile, progress: Progress) -> ModelInfo:
        loaded, reused = self._model(profile, progress)
        old = self.session
        if (
            old is not None
            and old.loaded.model is loaded.model
            and (old.loaded.context_length == loaded.context_length)
        ):
            old.system_prompt = profile.system_prompt  # the cached prefix check handles it
            old.set_chat_format(profile.chat_format)
            session = old
        else:
            session = ChatSession(loaded, profile.system_prompt, profile.chat_format)
            if old is not None:
                session.messages = list(old.messages)  # the conversation survives a reload
                session.pinned = set(old.pinned)
            self.session = session
        session.speculative = profile.speculative
        self.profile = profile
        return model_info(loaded, reused)

    def _active(self) -> ChatSession:
        if self.session is None:
            raise UserError("no model is loaded yet: pick a profile first")
        return self.session

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[Event]:
        session = self._active()
        if request.kind == "dialog":
            s, n = request.sampling, request.max_new_tokens
            events = session.answer(list(request.messages), s, n, cancel)
            return started(session, None, events)
        if request.kind == "complete":
            s, n = request.sampling, request.max_new_tokens
            events = session.complete(request.text, s, n, cancel)
            return with_notice(session, started(session, None, events))
        return with_context(session, chat_turn(session, request, cancel))

    def clear(self, messages: Sequence[Message] = ()) -> None:
        if self.session is None:
            if messages:
                raise UserError("no model is loaded yet: pick a profile first")
            return
        self.session.clear()
        self.session.messages = list(messages)  # a resumed chat: prefix reuse rebuilds the cache

    def pin(self, index: int, pinned: bool = True) -> Pinned:
        session = self._active()
        session.pin(index, pinned)
        return Pinned(session.context_start, tuple(sorted(session.pinned)))

    def tokenize(self, request: TokenizeRequest) -> Tokens:
        session = self._active()
        if request.messages:
            ids = session.encode_dialog(list(request.messages))
        else:
            ids = encode_raw(session.loaded.tokenizer, request.text)
        return Tokens(tuple(ids), session.cache.max_len)

    def history(self) -> tuple[list[Message], set[int]]:
        if self.session is None:
            return [], set()
        return list(self.session.messages), set(self.session.pinned)


def chat_turn(
    session: ChatSession, request: GenerationRequest, cancel: threading.Event
) -> Iterator[Event]:
    """A chat, regenerate or edit turn's events, TurnStarted first; a turn the session refuses
    ends with Failed saying how many messages the conversation still holds (an edit or a
    regenerate drops the answered message and what followed before it answers again)."""
    s, n = request.sampling, request.max_new_tokens
    try:
        if request.kind == "continue":
            events = session.continue_reply(s, n, cancel)
            yield from started(session, None, events, reply=len(session.messages) - 1)
            return
        if request.kind == "chat":
            events = session.send(request.text, s, n, cancel)
        elif request.kind == "regenerate":
            events = session.regenerate(s, n, cancel)
        else:
            events = session.edit_message(request.index, request.text, s, n, cancel)
        yield from started(session, len(session.messages), events)  # its user message's index
    except UserError as exc:
        yield Failed(str(exc), kept=len(session.messages))


def started(
    session: ChatSession, user: int | None, events: Iterator[Event], reply: int | None = None
) -> Iterator[Event]:
    """The events with TurnStarted before the first: by then the session has fitted the prompt
    (and set its notice). `user`: where a chat turn's user message goes (None: a completion,
    or a continue: then `reply` is the message it extends)."""
    for n, event in enumerate(events):
        if n == 0:
            where = reply if user is None else user + 1
            yield TurnStarted(user, where, session.last_notice)
        yield event


def with_context(session: ChatSession, events: Iterator[Event]) -> Iterator[Event]:
    """A chat turn's events, its Done telling which messages are still in the context."""
    for event in with_notice(session, events):
        if isinstance(event, Done):
            event = replace(
                event, context_start=session.context_start, pinned=tuple(sorted(session.pinned))
            )
        yield event


def with_notice(session: ChatSession, events: Iterator[Event]) -> Iterator[Event]:
    """The events, Done carrying the session's notice about this turn's prompt (if any)."""
    for event in events:
        if isinstance(event, Done) and session.last_notice:
            event = replace(event, notice=session.last_notice)
        yield event
