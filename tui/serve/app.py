"""The ASGI app of `llama-tui serve` (starlette + sse-starlette) over the engine queue.

Every completion is one ticket of the one EngineQueue, so requests run in order and the KV
cache keeps the longest common prefix across them: a client resending its whole history pays
only for the new tokens (``usage.prompt_tokens_details.cached_tokens`` says how many were reused).
The engine runs in its own thread, so /health answers while a reply is generating. A client
that disconnects mid-stream cancels its ticket: generation stops within one token.
"""

from __future__ import annotations

import hmac
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine import (
    Done,
    EngineQueue,
    Failed,
    GenerationRequest,
    ModelInfo,
    Profile,
    TokenEvent,
    TokenizeRequest,
    Tokens,
    prompt_budget,
)
from tui.serve.protocol import (
    Common,
    RequestError,
    chat_messages,
    common,
    completion_prompt,
    envelope,
    error_body,
    finish_reason,
    timings,
    usage,
)

OPEN_PATHS = ("/health",)  # answered without the API key


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(error_body(str(exc), param=exc.param), status_code=exc.status)


def _failed(event: Failed) -> RequestError:
    status = 500 if event.server or event.message.startswith("internal error") else 400
    return RequestError(event.message, status=status)


class Server:
    def __init__(
        self, queue: EngineQueue, profile: Profile, info: ModelInfo, api_key: str | None
    ) -> None:
        self.queue, self.profile, self.info, self.api_key = queue, profile, info, api_key
        self.model_id = info.name
        self.ids = itertools.count(1)

    # plumbing ---------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        if self.api_key is None or request.url.path in OPEN_PATHS:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        ok = hmac.compare_digest(token.strip().encode(), self.api_key.encode())
        return scheme.lower() == "bearer" and ok

    async def body(self, request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}") from None

    def route(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not self.authorized(request):
                body = error_body("invalid or missing API key", "authentication_error")
                return JSONResponse(body, status_code=401)
            try:
                return await handler(request)
            except RequestError as exc:
                return _error(exc)

        return endpoint

    # endpoints --------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        entry = {
            "id": self.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "llama-tui",
            "max_model_len": self.info.context_length,
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def tokens(self, request: TokenizeRequest) -> Tokens:
        async for event in self.queue.submit(request):
            if isinstance(event, Tokens):
                return event
            if isinstance(event, Failed):
                raise _failed(event)
        raise RequestError("the engine gave no tokens", status=500)

    async def tokenize(self, request: Request) -> Response:
        body = await self.body(request)
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        if "messages" in body:
            tokens = await self.tokens(TokenizeRequest(messages=chat_messages(body)))
        else:
            text = body.get("content", body.get("prompt"))
            if not isinstance(text, str):
                raise RequestError("content must be a string", "content")
            tokens = await self.tokens(TokenizeRequest(text=text))
        ids = list(tokens.ids)
        return JSONResponse(
            {"tokens": ids, "count": len(ids), "max_model_len": tokens.context_length}
        )

    def settings(self, body: Any) -> Common:
        p = self.profile
        return common(body, p.sampling, p.max_new_tokens, self.model_id)

    async def chat(self, request: Request) -> Response:
        body = await self.body(request)
        c = self.settings(body)
        messages = chat_messages(body)
        ask = GenerationRequest("dialog", "", c.sampling, c.max_tokens, messages=messages)
        return await self.answer(ask, c, "chat.completion")

    async def completions(self, request: Request) -> Response:
        body = await self.body(request)
        c = self.settings(body)
        prompt = completion_prompt(body)
        tokens = await self.tokens(TokenizeRequest(text=prompt))
        budget = prompt_budget(tokens.context_length, c.max_tokens)
        if tokens.n > budget:
            raise RequestError(
                f"the prompt is {tokens.n} tokens, over the {budget}-token prompt budget "
                f"(context {tokens.context_length}): shorten it or ask for fewer tokens",
                "prompt",
            )
        ask = GenerationRequest("complete", prompt, c.sampling, c.max_tokens)
        return await self.answer(ask, c, "text_completion")

    async def answer(self, ask: GenerationRequest, c: Common, kind: str) -> Response:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        request_id = f"{prefix}-{next(self.ids)}"
        ticket = self.queue.submit(ask)
        events = ticket.__aiter__()
        first: list[Any] = []
        try:  # wait for the first token or the end: a refused prompt is a 4xx, not a stream
            async for event in events:
                if isinstance(event, Failed):
                    raise _failed(event)
                if isinstance(event, TokenEvent | Done):
                    first.append(event)
                    break
        except BaseException:
            ticket.cancel()
            raise
        if not c.stream:
            return await self.whole(ticket, first, events, c, kind, request_id)
        return EventSourceResponse(self.chunks(ticket, first, events, c, kind, request_id))

    def choice(self, kind: str, text: str, ids: list[int], c: Common, stream: bool) -> dict:
        if kind == "chat.completion":
            key = "delta" if stream else "message"
            out: dict[str, Any] = {"index": 0, key: {"role": "assistant", "content": text}}
        else:
            out = {"index": 0, "text": text}
        if c.token_ids:
            out["token_ids"] = ids
        out["finish_reason"] = None
        return out

    async def whole(
        self,
        ticket: Any,
        first: list[Any],
        events: AsyncIterator[Any],
        c: Common,
        kind: str,
        request_id: str,
    ) -> Response:
        done: Done | None = None
        try:
            async for event in _chain(first, events):
                if isinstance(event, Done):
                    done = event
                elif isinstance(event, Failed):
                    raise _failed(event)
        finally:
            ticket.cancel()  # a no-op once it ended; stops it if this request was cancelled
        if done is None:
            raise RequestError("the engine ended without a reply", status=500)
        out = envelope(kind, request_id, c.model)
        choice = self.choice(kind, done.text, done.token_ids, c, stream=False)
        choice["finish_reason"] = finish_reason(done.stop_reason)
        out.update(choices=[choice], usage=usage(done.metrics), timings=timings(done.metrics))
        return JSONResponse(out)

    async def chunks(
        self,
        ticket: Any,
        first: list[Any],
        events: AsyncIterator[Any],
        c: Common,
        kind: str,
        request_id: str,
    ) -> AsyncIterator[dict[str, str]]:
        chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else kind
        head = envelope(chunk_kind, request_id, c.model)
        try:
            async for event in _chain(first, events):
                if isinstance(event, TokenEvent):
                    choice = self.choice(kind, event.text, [event.token_id], c, stream=True)
                    yield {"data": json.dumps({**head, "choices": [choice]})}
                elif isinstance(event, Failed):
                    yield {"data": json.dumps(error_body(event.message, "server_error"))}
                    return
                elif isinstance(event, Done):
                    choice = self.choice(kind, "", [], c, stream=True)
                    if kind == "chat.completion":
                        choice["delta"] = {}
                    choice["finish_reason"] = finish_reason(event.stop_reason)
                    last = {**head, "choices": [choice], "timings": timings(event.metrics)}
                    yield {"data": json.dumps(last)}
                    if c.include_usage:
                        tail = {**head, "choices": [], "usage": usage(event.metrics)}
                        yield {"data": json.dumps(tail)}
                    yield {"data": "[DONE]"}
                    return
        finally:
            ticket.cancel()  # the client went away mid-stream: stop within one token


async def _chain(first: list[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for event in first:
        yield event
    async for event in rest:
        yield event


def make_app(
    queue: EngineQueue, profile: Profile, info: ModelInfo, api_key: str | None
) -> Starlette:
    """The app over a queue whose backend has `profile` loaded (`info`)."""
    s = Server(queue, profile, info, api_key)
    routes = [
        Route("/health", s.route(s.health), methods=["GET"]),
        Route("/v1/models", s.route(s.models), methods=["GET"]),
        Route("/tokenize", s.route(s.tokenize), methods=["POST"]),
        Route("/v1/chat/completions", s.route(s.chat), methods=["POST"]),
        Route("/v1/completions", s.route(s.completions), methods=["POST"]),
    ]
    return Starlette(routes=routes)
