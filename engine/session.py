"""ChatSession: one conversation over one loaded model, with a KV cache kept across turns."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import NoReturn

from engine.chat_format import ChatFormatter, Message, encode_raw, resolve_chat_format
from engine.config import SamplingSettings
from engine.errors import ContextOverflowError, UserError
from engine.events import Done, Event, add_timings
from engine.generate import generate
from engine.history import (
    CUT_MARKER,
    TARGET_FRACTION,
    choose_cut,
    keep_recent,
    kept_indexes,
    pair_cut_points,
    prompt_budget,
    split_keep,
)
from engine.kv_cache import KVCache
from engine.loaders import LoadedModel
from engine.offload import offload_metrics
from engine.sampling import MirostatState, new_sampler_state


@dataclass(frozen=True)
class LastReply:
    """The last reply as the cache holds it: a continue feeds prompt + reply ids again."""

    prompt: list[int]
    ids: list[int]
    stop_reason: str


CONTINUABLE = ("length", "cancelled")  # a reply that ended on its own or filled the context: no


class ChatSession:
    def __init__(
        self, loaded: LoadedModel, system_prompt: str | None = None, chat_format: str = "auto"
    ) -> None:
        self.loaded = loaded
        self.system_prompt = system_prompt
        self._format_name = ""
        self.formatter: ChatFormatter | None = None
        self.set_chat_format(chat_format)
        self.messages: list[Message] = []  # user/assistant turns, without the system prompt
        self.pinned: set[int] = set()  # indexes into messages that trimming never drops
        self.context_start = 0  # messages[:context_start] left the context (except pinned)
        self.target_fraction = TARGET_FRACTION  # a trim brings the prompt under this share
        self.context_shift = True  # after a trim, move cached K/V instead of recomputing
        self.speculative = "off"  # the profile's: "prompt-lookup" drafts (engine/speculative.py)
        self.last_notice: str | None = None  # one line for the user about the last turn's trim
        self._seen: dict[int, tuple[str, str]] = {}  # index -> (full text, what the model saw)
        self.sampler_state: MirostatState | None = None  # Mirostat's mu, per conversation
        self._reply: LastReply | None = None  # the last reply's ids, while it is the last message
        self._sampler_key: tuple[int, float] | None = None
        a = loaded.args
        self.cache = KVCache(
            a.n_layers,
            a.n_kv_heads,
            a.head_dim,
            loaded.context_length,
            dtype=loaded.dtype,
            device=loaded.device,
        )

    def dialog(self, messages: list[Message]) -> list[Message]:
        system = [Message("system", self.system_prompt)] if self.system_prompt else []
        return system + messages

    def set_chat_format(self, name: str) -> None:
        """How dialogs become tokens: "auto" (the model's template, else a guess from its
        tokenizer), "template", or a built-in format. Resolved at the next turn, so a choice
        the model cannot serve fails that turn with a one-line error, not the session."""
        if name != self._format_name:
            self._format_name, self.formatter = name, None

    @property
    def dropped_messages(self) -> int:
        """Messages of this conversation no longer in the model's context."""
        return sum(1 for i in range(self.context_start) if i not in self.pinned)

    def pin(self, index: int, pinned: bool = True) -> None:
        """Keep messages[index] in context whatever trimming drops (pinned=False lets it go)."""
        if not 0 <= index < len(self.messages):
            raise UserError(
                f"there is no message {index + 1}: this conversation has {len(self.messages)} "
                "messages, numbered from 1"
            )
        if pinned:
            self.pinned.add(index)
        else:
            self.pinned.discard(index)

    def visible(self, messages: list[Message], cut: int | None = None) -> list[Message]:
        """The messages still in context when messages[:cut] (except pinned) are dropped."""
        cut = self.context_start if cut is None else cut
        return [messages[i] for i in kept_indexes(len(messages), cut, self.pinned)]

    def chat_formatter(self) -> ChatFormatter:
        if self.formatter is None:
            m = self.loaded
            self.formatter = resolve_chat_format(
                self._format_name, m.tokenizer, m.chat_template, m.path.name
            )
        return self.formatter

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        return self.chat_formatter().encode(self.dialog(messages))

    def encode_dialog(self, messages: list[Message]) -> list[int]:
        """Prompt ids of `messages` exactly as given (a system message included, no trimming)."""
        return self.chat_formatter().encode(messages)

    def answer(
        self,
        messages: list[Message],
        settings: SamplingSettings,
        max_new_tokens: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Answer a whole dialog the caller keeps (``serve``): no trimming; a prompt over the
        budget is refused (ContextOverflowError). The KV cache reuses the longest common prefix
        with what it holds, so a client resending its history pays only for the new tokens."""
        if not messages or messages[-1].role != "user":
            raise UserError("the last message must be the user's")
        ids = self.encode_dialog(messages)
        budget = prompt_budget(self.cache.max_len, max_new_tokens)
        if len(ids) > budget:
            raise ContextOverflowError(
                f"the prompt is {len(ids)} tokens, over the {budget}-token prompt budget "
                f"(context {self.cache.max_len} minus {self.cache.max_len - budget} for the "
                "reply): shorten it or ask for fewer tokens"
            )
        self.last_notice = None
        history = [m for m in messages if m.role != "system"]
        for event in self._run(ids, settings, max_new_tokens, cancel):
            if isinstance(event, Done):
                self.messages = [*history, Message("assistant", event.text)]
                self.context_start, self.pinned = 0, set()
            yield event

    def send(
        self,
        text: str,
        settings: SamplingSettings,
        max_new_tokens: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """One user turn: the reply streams as events; on Done both messages join the history.

        A stopped or cancelled reply is kept (partial text) so nothing the user saw is lost.
        """
        messages = [*self.messages, Message("user", text)]
        t0 = time.perf_counter()
        ids = self._fit(messages, max_new_tokens)
        prompt_s = time.perf_counter() - t0
        self._reply = None
        for event in self._run(ids, settings, max_new_tokens, cancel, prompt_s):
            if isinstance(event, Done):
                self.messages = [*messages, Message("assistant", event.text)]
                self._reply = LastReply(ids, event.token_ids, event.stop_reason)
            yield event

    def continue_reply(
        self,
        settings: SamplingSettings,
        max_new_tokens: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Extend the last reply where it stopped (max_new_tokens, or stopped by the user). The
        cache still holds its prompt and tokens, so only the last token is computed. The tokens
        stream as usual; Done's text and token ids are the whole reply, joined."""
        if not self.messages or self.messages[-1].role != "assistant":
            raise UserError("there is no reply to continue: the last message is not a reply")
        last = self._reply
        if last is not None and last.stop_reason not in CONTINUABLE:
            why = "ended on its own" if last.stop_reason == "stop" else "filled the context"
            raise UserError(f"the last reply {why}; /continue extends one cut by length or stopped")
        if last is None:  # a resumed chat: its K/V is rebuilt from the text
            tok = self.loaded.tokenizer
            reply = tok.encode(self.messages[-1].content, allow_special=False)
            last = LastReply(self.prompt_ids(self.visible(self.messages[:-1])), reply, "length")
        ids = [*last.prompt, *last.ids]
        if len(ids) >= self.cache.max_len - 1:
            raise UserError(
                f"the context is full ({len(ids)} of {self.cache.max_len} tokens): the reply "
                "cannot go on; start a new chat or raise context_length"
            )
        self.last_notice = None
        for event in self._run(ids, settings, max_new_tokens, cancel):
            if isinstance(event, Done):
                joined = [*last.ids, *event.token_ids]
                text = self.loaded.tokenizer.decode(joined)
                self.messages = [*self.messages[:-1], Message("assistant", text)]
                self._reply = LastReply(last.prompt, joined, event.stop_reason)
                event = replace(event, text=text, token_ids=joined)
            yield event

    def regenerate(
        self, settings: SamplingSettings, max_new_tokens: int, cancel: threading.Event | None = None
    ) -> Iterator[Event]:
        """Drop the last reply and answer the last user message again (its prefix is cached)."""
        return self.edit_last(None, settings, max_new_tokens, cancel)

    def edit_last(
        self,
        text: str | None,
        settings: SamplingSettings,
        max_new_tokens: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Replace the last user message (None keeps it) and answer it again."""
        last_user = max((i for i, m in enumerate(self.messages) if m.role == "user"), default=None)
        if last_user is None:
            raise UserError("there is no user message to regenerate or edit yet")
        return self.edit_message(last_user, text, settings, max_new_tokens, cancel)

    def edit_message(
        self,
        index: int,
        text: str | None,
        settings: SamplingSettings,
        max_new_tokens: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Replace user message messages[index] (None keeps it), drop what followed it and
        answer it; the cache still holds the turns before it, so only the edit is prefilled."""
        if not 0 <= index < len(self.messages) or self.messages[index].role != "user":
            raise UserError(f"message {index} is not a user message of this conversation")
        new_text = self.messages[index].content if text is None else text
        self.messages = self.messages[:index]
        self.context_start = min(self.context_start, index)
        self.pinned = {i for i in self.pinned if i < index}
        return self.send(new_text, settings, max_new_tokens, cancel)

    def complete(
        self,
        text: str,
        settings: SamplingSettings,
        max_new_tokens: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Free-form completion of raw text (no chat template, no history).

        A prompt over the budget keeps its most recent tokens (and BOS); ``last_notice`` says
        how many were cut from its start."""
        tok = self.loaded.tokenizer
        t0 = time.perf_counter()
        ids = encode_raw(tok, text)
        if not ids:
            raise UserError("the prompt is empty: give some text to complete")
        self.last_notice = None
        budget = prompt_budget(self.cache.max_len, max_new_tokens)
        if len(ids) > budget:
            bos = int(tok.add_bos and tok.bos_id is not None and ids[0] == tok.bos_id)
            kept = keep_recent(ids, budget, bos)
            self.last_notice = (
                f"the prompt is {len(ids)} tokens, over the {budget}-token prompt budget: "
                f"its first {len(ids) - len(kept)} tokens were cut"
            )
            ids = kept
        return self._run(ids, settings, max_new_tokens, cancel, time.perf_counter() - t0)

    def _run(
        self,
        ids: list[int],
        settings: SamplingSettings,
        max_new_tokens: int,
        cancel: threading.Event | None,
        prompt_s: float = 0.0,  # templating, tokenizing and trimming before it
    ) -> Iterator[Event]:
        key = (settings.mirostat, settings.mirostat_tau)
        if self.sampler_state is None or key != self._sampler_key:  # new mode/tau: mu = 2 tau
            self.sampler_state, self._sampler_key = new_sampler_state(settings), key
        m = self.loaded
        events = generate(
            m.model,
            m.tokenizer,
            self.cache,
            ids,
            settings,
            max_new_tokens,
            cancel,
            sampler_state=self.sampler_state,
            speculative=self.speculative,
        )
        return add_timings(offload_metrics(m.streamer, events), prompt_s=prompt_s)

    def clear(self) -> None:
        """New conversation; the cache keeps its tokens, so a shared prefix is still reused."""
        self.messages = []
        self.pinned = set()
        self.context_start = 0
        self.sampler_state = None
        self._reply = None

    def _fit(self, messages: list[Message], max_new_tokens: int) -> list[int]:
        """Prompt ids for messages, dropping the oldest pairs when they exceed the budget, and
        cutting the newest message's middle when it does not fit even alone (see ``_cut``).

        After a trim the cached K/V of the kept turns are shifted into place (see
        ``_shift_cache``), so generate() prefills only what the cache cannot supply.
        """
        self.last_notice = None
        self.context_start = min(self.context_start, len(messages) - 1)
        view = self._model_view(messages)
        before = self.prompt_ids(self.visible(view))
        budget = prompt_budget(self.cache.max_len, max_new_tokens)
        if len(before) <= budget:
            return before
        lengths = {self.context_start: len(before)}

        def prompt_len(cut: int) -> int:
            if cut not in lengths:
                lengths[cut] = len(self.prompt_ids(self.visible(view, cut)))
            return lengths[cut]

        points = pair_cut_points([m.role for m in messages], self.context_start)
        cut = choose_cut(prompt_len, points, budget, self.target_fraction)
        dropped = sum(1 for i in range(self.context_start, cut) if i not in self.pinned)
        notices = [f"{dropped} older message(s) left the context"] if dropped else []
        if prompt_len(cut) > budget:
            view, n_cut = self._cut(view, cut, budget)
            before = self.prompt_ids(self.visible(view))  # the dropped span, as the model saw it
            notices.append(
                f"{n_cut} tokens from the middle of your message were cut for the model "
                "(the history keeps the full text)"
            )
        self.context_start = cut
        ids = self.prompt_ids(self.visible(view))
        self.last_notice = "; ".join(notices) + f" ({len(ids)} of {budget} tokens)"
        if self.context_shift:
            self._shift_cache(before, ids)
        return ids

    def _model_view(self, messages: list[Message]) -> list[Message]:
        """messages as the model saw them: earlier messages that were cut keep their cut text."""
        last = len(messages) - 1
        return [
            replace(m, content=self._seen[i][1])
            if i < last and i in self._seen and self._seen[i][0] == m.content
            else m
            for i, m in enumerate(messages)
        ]

    def _cut(self, view: list[Message], cut: int, budget: int) -> tuple[list[Message], int]:
        """Cut the newest message at token level, keeping its start and end around CUT_MARKER,
        so the prompt (system prompt, pinned messages, template) fits ``budget``.

        Returns the new view and the number of the message's tokens cut."""
        tok = self.loaded.tokenizer
        last = view[-1]
        ids = tok.encode(last.content, allow_special=False)

        def with_text(text: str) -> list[Message]:
            return [*view[:-1], replace(last, content=text)]

        def size(text: str) -> int:
            return len(self.prompt_ids(self.visible(with_text(text), cut)))

        room = budget - size(CUT_MARKER)
        text, kept = CUT_MARKER, 0
        for _ in range(8):  # re-encoding at the seams can shift a count by a token or two
            if room < 1:
                self._no_room(budget)
            head, tail = split_keep(len(ids), room)
            text = (
                tok.decode(ids[:head]).rstrip("\ufffd")
                + CUT_MARKER
                + tok.decode(ids[len(ids) - tail :]).lstrip("\ufffd")
            )
            over = size(text) - budget
            if over <= 0:
                kept = head + tail
                break
            room -= over
        else:
            self._no_room(budget)
        self._seen[len(view) - 1] = (last.content, text)
        return with_text(text), len(ids) - kept

    def _no_room(self, budget: int) -> NoReturn:
        """One-line error when the parts trimming never drops leave no room for a message."""
        reply = self.cache.max_len - budget
        where = f"of the {budget}-token prompt budget (context_length {self.cache.max_len} "
        where += f"minus {reply} for the reply)"
        alone = len(self.prompt_ids([Message("user", CUT_MARKER)]))
        if self.system_prompt and alone > budget:
            raise UserError(
                f"system_prompt takes about {alone} tokens {where}: "
                "shorten system_prompt or raise context_length"
            )
        if self.pinned:
            raise UserError(
                f"pinned messages leave no room {where} for your message: "
                "unpin some or raise context_length"
            )
        raise UserError(
            f"the chat template takes about {alone} tokens {where}: raise context_length"
        )

    def _shift_cache(self, before: list[int], after: list[int]) -> None:
        """Reuse cached K/V across a dropped span: the cache holds (a prefix of) ``before``;
        ``after`` is the same dialog without the dropped turns. If after = P + K where the cache
        holds P + D + K' and K starts with K', cut D out of the cache and re-rotate K'.
        Anything that does not line up is left to generate()'s prefix reuse + recompute."""
        cache = self.cache
        p = cache.common_prefix(after)
        d = len(before) - len(after)  # tokens of the dropped turns, if tokenization is stable
        if d <= 0 or p + d >= cache.length:
            return
        kept = cache.tokens[p + d :]
        m = 0
        for a, b in zip(kept, after[p:], strict=False):
            if a != b:
                break
            m += 1
        if m == 0:
            return
        model = self.loaded.model
        cache.shift(p, p + d, model.rope[d])
        cache.truncate(p + m)
