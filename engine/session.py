"""ChatSession: one conversation over one loaded model, with a KV cache kept across turns."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from engine.chat_format import ChatFormatter, Message, encode_raw, resolve_chat_format
from engine.config import SamplingSettings
from engine.errors import UserError
from engine.events import Done, Event
from engine.generate import generate
from engine.kv_cache import KVCache
from engine.loaders import LoadedModel


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

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        if self.formatter is None:
            m = self.loaded
            self.formatter = resolve_chat_format(
                self._format_name, m.tokenizer, m.chat_template, m.path.name
            )
        return self.formatter.encode(self.dialog(messages))

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
        ids = self.prompt_ids(messages)
        for event in self._run(ids, settings, max_new_tokens, cancel):
            if isinstance(event, Done):
                self.messages = [*messages, Message("assistant", event.text)]
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
        new_text = self.messages[last_user].content if text is None else text
        self.messages = self.messages[:last_user]
        return self.send(new_text, settings, max_new_tokens, cancel)

    def complete(
        self,
        text: str,
        settings: SamplingSettings,
        max_new_tokens: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Free-form completion of raw text (no chat template, no history)."""
        ids = encode_raw(self.loaded.tokenizer, text)
        if not ids:
            raise UserError("the prompt is empty: give some text to complete")
        return self._run(ids, settings, max_new_tokens, cancel)

    def _run(
        self,
        ids: list[int],
        settings: SamplingSettings,
        max_new_tokens: int,
        cancel: threading.Event | None,
    ) -> Iterator[Event]:
        m = self.loaded
        return generate(m.model, m.tokenizer, self.cache, ids, settings, max_new_tokens, cancel)

    def clear(self) -> None:
        """New conversation; the cache keeps its tokens, so a shared prefix is still reused."""
        self.messages = []
