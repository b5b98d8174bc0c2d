"""RemoteBackend: one conversation on an OpenAI-compatible server, behind the local engine's
interface (engine/backend.py), yielding the same events.

The server keeps no conversation: each turn sends the messages still in context. Trimming uses
engine/history.py like the local session, dropping the oldest pairs down to TARGET_FRACTION of
the budget, so the messages sent keep one stable prefix for several turns and the server's
prefix cache hits (``cached_tokens`` per turn shows it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.backend import GenerationRequest, ModelInfo, Progress, TokenizeRequest
from engine.chat_format import Message
from engine.config import Profile, SamplingSettings
from engine.errors import ServerError, UserError
from engine.events import Done, Event, Failed, Pinned, PrefillDone, TokenEvent, Tokens, TurnStarted
from engine.history import (
    TARGET_FRACTION,
    choose_cut,
    kept_indexes,
    pair_cut_points,
    prompt_budget,
)
from engine.metrics import GenerationMetrics

if TYPE_CHECKING:  # httpx (~60 ms to import) only once a remote profile loads
    from engine.remote.client import RemoteClient
    from engine.remote.counting import TokenCounter

# Sampling keys no OpenAI-compatible server takes: a remote profile does not send them.
REMOTE_UNSENT = ("repeat_last_n", "typical_p")
STOP_REASONS = {"stop": "stop", "length": "length", "eos": "stop", None: "stop"}


def sampling_body(s: SamplingSettings, max_new_tokens: int) -> dict[str, Any]:
    """Standard OpenAI fields, then the extra body fields llama.cpp and vLLM accept."""
    body: dict[str, Any] = {
        "max_tokens": max_new_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repeat_penalty": s.repeat_penalty,  # llama.cpp; vLLM calls it repetition_penalty
        "repetition_penalty": s.repeat_penalty,
    }
    if s.seed is not None:
        body["seed"] = s.seed
    if s.mirostat:
        body.update(mirostat=s.mirostat, mirostat_tau=s.mirostat_tau, mirostat_eta=s.mirostat_eta)
    return body


def context_size(client: RemoteClient, entry: dict[str, Any]) -> int | None:
    """The server's context: vLLM's max_model_len, llama.cpp's /props n_ctx, or None."""
    for key in ("max_model_len", "context_length"):
        if isinstance(entry.get(key), int):
            return int(entry[key])
    props = client.try_json("GET", f"{client.root}/props")
    if isinstance(props, dict):
        settings = props.get("default_generation_settings")
        for where in (settings, props):
            if isinstance(where, dict) and isinstance(where.get("n_ctx"), int):
                return int(where["n_ctx"])
    return None


@dataclass
class Reply:
    """What one streamed reply has brought so far."""

    text: str = ""
    ids: list[int] | None = None  # token ids, when the server sends them (serve, vLLM)
    chunks: int = 0  # content deltas received
    first_s: float = 0.0  # since the request: the first content
    last_s: float = 0.0
    finish: str | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None


class RemoteBackend:
    def __init__(self) -> None:
        self.client: RemoteClient | None = None
        self.profile: Profile | None = None
        self.model = ""
        self.models: list[str] = []
        self.context_length = 0
        self.counter: TokenCounter | None = None
        self.messages: list[Message] = []
        self.pinned: set[int] = set()
        self.context_start = 0
        self.last_notice: str | None = None

    # the interface ----------------------------------------------------------------------

    def load(self, profile: Profile, progress: Progress) -> ModelInfo:
        from engine.remote.client import RemoteClient
        from engine.remote.counting import TokenCounter

        start = time.perf_counter()
        if self.client is not None:
            self.client.close()
        client = self.client = RemoteClient(
            profile.base_url, profile.api_key_env, profile.request_timeout_s
        )
        entries = client.models()
        self.models = [str(e["id"]) for e in entries]
        if not self.models:
            raise ServerError(f"{client.base_url}/models: the server lists no model")
        wanted = profile.remote_model or self.models[0]
        if wanted not in self.models:
            raise UserError(
                f"remote_model = {wanted!r}: the server at {client.host} has no such model; "
                f"it has: {', '.join(self.models)}"
            )
        self.model = wanted
        entry = entries[self.models.index(wanted)]
        server_ctx = context_size(client, entry)
        self.context_length = server_ctx or profile.context_length
        self.counter = TokenCounter(client, wanted, profile.tokenizer)
        self.profile = profile
        progress(1, 1)
        where = "the server" if server_ctx else "context_length (the server does not say)"
        return ModelInfo(
            name=wanted,
            path=client.base_url,
            device=f"remote: {client.host}",
            dtype="the server's",
            context_length=self.context_length,
            reused=False,
            load_s=time.perf_counter() - start,
            quantization="the server's",
            weights=f"context from {where}; tokens {self.counter.how}",
            models=tuple(self.models),
        )

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[Event]:
        if self.client is None or self.profile is None or self.counter is None:
            raise UserError("no server is connected yet: pick a profile first")
        if request.kind == "complete":
            return self._complete(request, cancel)
        if request.kind == "dialog":
            raise UserError("a remote profile cannot be served again")
        if request.kind == "continue":
            raise UserError("/continue needs the local engine: a server has no cache to resume")
        return self._chat(request, cancel)

    def clear(self, messages: Sequence[Message] = ()) -> None:
        self.messages, self.pinned, self.context_start = list(messages), set(), 0

    def pin(self, index: int, pinned: bool = True) -> Pinned:
        if not 0 <= index < len(self.messages):
            raise UserError(
                f"there is no message {index + 1}: this conversation has {len(self.messages)} "
                "messages, numbered from 1"
            )
        (self.pinned.add if pinned else self.pinned.discard)(index)
        return Pinned(self.context_start, tuple(sorted(self.pinned)))

    def tokenize(self, request: TokenizeRequest) -> Tokens:
        if self.counter is None:
            raise UserError("no server is connected yet: pick a profile first")
        c = self.counter
        n = c.count(request.messages) if request.messages else c.text(request.text)
        return Tokens((), self.context_length, estimated=c.estimated, count=n)

    def history(self) -> tuple[list[Message], set[int]]:
        return list(self.messages), set(self.pinned)

    # turns ------------------------------------------------------------------------------

    def _dialog(self, messages: list[Message]) -> list[Message]:
        assert self.profile is not None
        system = self.profile.system_prompt
        return ([Message("system", system)] if system else []) + messages

    def _fit(self, messages: list[Message], max_new_tokens: int) -> list[Message]:
        """The messages to send: the oldest unpinned pairs dropped while over the budget."""
        assert self.counter is not None
        self.last_notice = None
        self.context_start = min(self.context_start, len(messages) - 1)
        budget = prompt_budget(self.context_length, max_new_tokens)

        def visible(cut: int) -> list[Message]:
            return [messages[i] for i in kept_indexes(len(messages), cut, self.pinned)]

        def prompt_len(cut: int) -> int:
            return self.counter.count(self._dialog(visible(cut))) if self.counter else 0

        points = pair_cut_points([m.role for m in messages], self.context_start)
        cut = choose_cut(prompt_len, points, budget, TARGET_FRACTION)
        if prompt_len(cut) > budget:
            raise UserError(
                f"your message is about {prompt_len(cut)} tokens with what must stay, over the "
                f"{budget}-token prompt budget of context {self.context_length}: shorten it"
            )
        dropped = sum(1 for i in range(self.context_start, cut) if i not in self.pinned)
        if dropped:
            about = "about " if self.counter.estimated else ""
            self.last_notice = (
                f"{dropped} older message(s) left the context "
                f"({about}{prompt_len(cut)} of {budget} tokens)"
            )
        self.context_start = cut
        return visible(cut)

    def _chat(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[Event]:
        if request.kind == "chat":
            base, text = self.messages, request.text
        else:  # regenerate / edit: answer user message `index` again
            users = [i for i, m in enumerate(self.messages) if m.role == "user"]
            index = request.index if request.kind == "edit" else (users[-1] if users else -1)
            if index not in users:
                yield Failed("there is no such user message to answer again", len(self.messages))
                return
            text = request.text if request.kind == "edit" else self.messages[index].content
            base = self.messages[:index]
            self.pinned = {i for i in self.pinned if i < index}
            self.context_start = min(self.context_start, index)
        messages = [*base, Message("user", text)]
        try:
            sent = self._fit(messages, request.max_new_tokens)
        except UserError as exc:
            yield Failed(str(exc), kept=len(self.messages))
            return
        self.messages = list(base)
        user = len(base)
        yield TurnStarted(user, user + 1, self.last_notice)
        body = {"messages": [{"role": m.role, "content": m.content} for m in self._dialog(sent)]}
        for event in self._stream("/chat/completions", body, request, cancel):
            if isinstance(event, Done):
                self.messages = [*messages, Message("assistant", event.text)]
                event = Done(
                    event.text,
                    event.token_ids,
                    event.stop_reason,
                    event.metrics,
                    self.context_start,
                    tuple(sorted(self.pinned)),
                    "; ".join(n for n in (self.last_notice, event.notice) if n) or None,
                )
            elif isinstance(event, Failed):
                event = Failed(event.message, kept=len(self.messages), server=event.server)
            yield event

    def _complete(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[Event]:
        yield TurnStarted(None, None, None)
        yield from self._stream("/completions", {"prompt": request.text}, request, cancel)

    def _stream(
        self, path: str, body: dict[str, Any], request: GenerationRequest, cancel: threading.Event
    ) -> Iterator[Event]:
        assert self.client is not None and self.counter is not None
        body = {
            "model": self.model,
            **body,
            **sampling_body(request.sampling, request.max_new_tokens),
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,  # vLLM and serve: token ids with each delta
        }
        prompt = self.counter.count([Message(**m) for m in body.get("messages", [])]) or 0
        reply, start = Reply(), time.perf_counter()
        fault: UserError | None = None
        try:
            for chunk in self.client.stream(path, body, cancel, self.models):
                yield from self._take(chunk, reply, start, prompt)
        except UserError as exc:
            fault = exc
        stop = "cancelled" if cancel.is_set() else STOP_REASONS.get(reply.finish, reply.finish)
        if fault is not None:
            if not reply.text:
                yield Failed(str(fault), server=isinstance(fault, ServerError))
                return
            stop = "error"
        metrics = self._metrics(reply, prompt)
        notice = f"{fault}; the partial reply is kept" if fault is not None else None
        yield Done(reply.text, reply.ids or [], str(stop), metrics, notice=notice)

    def _take(
        self, chunk: dict[str, Any], reply: Reply, start: float, prompt: int
    ) -> Iterator[Event]:
        if isinstance(chunk.get("usage"), dict):
            reply.usage = chunk["usage"]
        if isinstance(chunk.get("timings"), dict):
            reply.timings = chunk["timings"]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if choice.get("finish_reason"):
            reply.finish = str(choice["finish_reason"])
        ids = choice.get("token_ids")
        ids = [int(i) for i in ids] if isinstance(ids, list) else []
        if not isinstance(text, str) or not (text or ids):
            return
        now = time.perf_counter() - start
        if reply.chunks == 0:
            reply.first_s = now
            yield PrefillDone(prompt, 0, now)
        if ids:
            reply.ids = [*(reply.ids or []), *ids]
        reply.chunks += 1
        reply.last_s = now
        reply.text += text
        yield TokenEvent(ids[-1] if ids else -1, text, now)

    def _metrics(self, reply: Reply, prompt: int) -> GenerationMetrics:
        usage, timings = reply.usage or {}, reply.timings or {}
        details = usage.get("prompt_tokens_details")
        server: list[str] = []
        prompt_tokens = usage.get("prompt_tokens")
        if isinstance(prompt_tokens, int):
            server.append("prompt")
        else:
            prompt_tokens = timings.get("prompt_n", 0) + timings.get("cache_n", 0) or prompt
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if not isinstance(cached, int) and isinstance(timings.get("cache_n"), int):
            cached = timings["cache_n"]
        if isinstance(cached, int):
            server.append("cache")
        generated = usage.get("completion_tokens")
        if not isinstance(generated, int):
            generated = len(reply.ids) if reply.ids else reply.chunks
        prefill_tok_s = float(timings.get("prompt_per_second") or 0.0)
        decode_tok_s = float(timings.get("predicted_per_second") or 0.0)
        if prefill_tok_s or decode_tok_s:
            server.append("speeds")
        assert self.counter is not None
        source = "client: TTFT, decode"
        source += f"; server: {', '.join(server)}" if server else "; server: nothing"
        if self.counter.estimated:
            source += "; context: estimated"
        steps = max(generated - 1, 0)
        return GenerationMetrics(
            prompt_tokens=int(prompt_tokens),
            cached_tokens=int(cached or 0),
            generated_tokens=int(generated),
            decode_steps=steps,
            ttft_s=reply.first_s,
            prefill_s=reply.first_s,
            decode_s=reply.last_s - reply.first_s,
            context_used=int(prompt_tokens) + int(generated),
            context_limit=self.context_length,
            source=source,
            server_prefill_tok_s=prefill_tok_s,
            server_decode_tok_s=decode_tok_s,
        )
