"""Counting a remote conversation's tokens, for trimming and for the context figure.

Best first: the server's /tokenize over the whole chat (`llama-tui serve`, vLLM: the template
included), its /tokenize over text (llama.cpp's server; llama-cpp-python's /extras/tokenize),
a local tokenizer file (`tokenizer =`), else about four characters a token. Text counts add
PER_MESSAGE tokens of template for each message, so only the chat-level count is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.chat_format import Message
from engine.remote.client import RemoteClient
from engine.tokenizers import load_tokenizer

PER_MESSAGE = 4  # template tokens around a message (role header, end marker), roughly
CHARS_PER_TOKEN = 4


def _as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _ids_of(answer: Any) -> list[Any] | None:
    if isinstance(answer, dict) and isinstance(answer.get("tokens"), list):
        return list(answer["tokens"])
    return None


class TokenCounter:
    """Counts messages the best way the server and profile allow; `how` says which."""

    def __init__(self, client: RemoteClient, model: str, tokenizer: str | None) -> None:
        self.client, self.model = client, model
        self._texts: dict[str, int] = {}  # message content -> tokens (text-level counting)
        self._text_count: Callable[[str], int | None] | None = None
        self.chat_level = False
        self.how = "estimated (about 4 characters a token)"
        self.estimated = True
        probe = [Message("user", "hi")]
        if self._chat_count(probe) is not None:
            self.chat_level, self.estimated, self.how = True, False, "server /tokenize"
            return
        for path, field, how in (
            ("/tokenize", "content", "server /tokenize"),
            ("/extras/tokenize", "input", "server /extras/tokenize"),
        ):
            url = f"{client.root}{path}"
            if _ids_of(client.try_json("POST", url, {field: "hi"})) is not None:
                self._text_count = self._server_text(url, field)
                self.estimated, self.how = False, how + " (template estimated)"
                return
        if tokenizer:
            tok = load_tokenizer(Path(tokenizer))
            self._text_count = lambda text: len(tok.encode(text, allow_special=False))
            self.estimated, self.how = (
                False,
                f"tokenizer {Path(tokenizer).name} (template estimated)",
            )

    def _server_text(self, url: str, field: str) -> Callable[[str], int | None]:
        def count(text: str) -> int | None:
            ids = _ids_of(self.client.try_json("POST", url, {field: text}))
            return None if ids is None else len(ids)

        return count

    def _chat_count(self, messages: Sequence[Message]) -> int | None:
        body = {"model": self.model, "messages": _as_dicts(messages)}
        answer = self.client.try_json("POST", f"{self.client.root}/tokenize", body)
        if isinstance(answer, dict) and isinstance(answer.get("count"), int):
            return int(answer["count"])
        return None

    def text(self, text: str) -> int:
        n = self._texts.get(text)
        if n is None:
            counted = self._text_count(text) if self._text_count is not None else None
            n = counted if counted is not None else len(text) // CHARS_PER_TOKEN + 1
            self._texts[text] = n
        return n

    def count(self, messages: Sequence[Message]) -> int:
        """Tokens of the prompt these messages make."""
        if self.chat_level:
            n = self._chat_count(messages)
            if n is not None:
                return n
        return sum(self.text(m.content) + PER_MESSAGE for m in messages) + PER_MESSAGE
