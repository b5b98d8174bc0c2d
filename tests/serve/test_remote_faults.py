"""How the remote backend takes a misbehaving server: a small starlette peer on loopback that
answers 429, 500, a malformed chunk or a stream cut short, the way real servers can."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine import (
    Done,
    Failed,
    GenerationRequest,
    Profile,
    RemoteBackend,
    ServerError,
    TokenEvent,
    UserError,
)
from tests.peers import free_port

MODE = {"name": "ok"}


def chunk(text: str) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": "peer", "max_model_len": 512}]})


async def chat(request: Request) -> Response:
    mode = MODE["name"]
    if mode == "429":
        return JSONResponse({"error": {"message": "slow down: 3 requests queued"}}, 429)
    if mode == "500":
        return JSONResponse({"error": {"message": "CUDA out of memory"}}, 500)
    if mode == "404":  # the model was unloaded or renamed on the server between two turns
        return JSONResponse({"error": {"message": "model 'peer' not found"}}, 404)

    async def events() -> AsyncIterator[dict[str, str]]:
        yield {"data": chunk("Hello")}
        if mode == "stall":
            await asyncio.sleep(3)
        yield {"data": chunk(" there")}
        if mode == "malformed":
            yield {"data": "{not json"}
        elif mode == "cut":
            return  # the stream ends without [DONE]
        else:
            yield {"data": "[DONE]"}

    return EventSourceResponse(events())


@pytest.fixture(scope="module")
def peer_url() -> Iterator[str]:
    port = free_port()
    app = Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )
    server = uvicorn.Server(uvicorn.Config(app, "127.0.0.1", port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)


def run(
    url: str, mode: str, timeout_s: float = 10, cancel: threading.Event | None = None
) -> list[object]:
    MODE["name"] = mode
    far = RemoteBackend()
    p = replace(Profile("peer", backend="openai", base_url=url), request_timeout_s=timeout_s)
    info = far.load(p, lambda d, t: None)
    assert info.context_length == 512 and "estimated" in info.weights  # no /tokenize there
    request = GenerationRequest("chat", "hi", p.sampling, 8)
    events = []
    for event in far.generate(request, cancel or threading.Event()):
        events.append(event)
        if isinstance(event, TokenEvent) and cancel is not None:
            cancel.set()  # Esc after the first token, while the server stalls
    return events


def test_a_whole_reply(peer_url: str) -> None:
    done = run(peer_url, "ok")[-1]
    assert isinstance(done, Done) and done.text == "Hello there" and done.stop_reason == "stop"
    assert done.metrics.source.endswith("context: estimated")


@pytest.mark.parametrize(
    ("mode", "said"),
    [("429", "HTTP 429: slow down: 3 requests queued"), ("500", "HTTP 500: CUDA out of memory")],
)
def test_refusals_are_one_line_with_the_servers_message(
    peer_url: str, mode: str, said: str
) -> None:
    failed = run(peer_url, mode)[-1]
    assert isinstance(failed, Failed) and failed.server and failed.kept == 0
    assert said in failed.message and "\n" not in failed.message


def test_a_model_gone_between_turns_is_one_line_naming_the_model(peer_url: str) -> None:
    MODE["name"] = "ok"
    far = RemoteBackend()
    p = Profile("peer", backend="openai", base_url=peer_url)
    far.load(p, lambda d, t: None)
    first = list(far.generate(GenerationRequest("chat", "hi", p.sampling, 8), threading.Event()))
    assert isinstance(first[-1], Done) and first[-1].text == "Hello there"
    MODE["name"] = "404"
    second = list(far.generate(GenerationRequest("chat", "more", p.sampling, 8), threading.Event()))
    failed = second[-1]
    assert isinstance(failed, Failed) and "\n" not in failed.message
    assert "HTTP 404" in failed.message and "model 'peer' not found" in failed.message
    assert failed.kept == 2  # the first turn stays in the conversation; the failed one does not


def test_a_host_that_does_not_resolve_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in: tests reach loopback only, so no real DNS lookup; the resolver fails here the
    way glibc's does for an unknown name (socket.gaierror, "Name or service not known")."""

    def no_such_host(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    far = RemoteBackend()
    with pytest.raises(UserError) as caught:
        far.load(Profile("far", backend="openai", base_url="http://gpu-box.lan:8000/v1"), print)
    assert str(caught.value) == (
        "cannot resolve the host of base_url http://gpu-box.lan:8000/v1: check it"
    )
    assert not isinstance(caught.value, ServerError)  # a user's typo, not a server fault


@pytest.mark.parametrize(("mode", "said"), [("malformed", "malformed chunk"), ("cut", "[DONE]")])
def test_a_broken_stream_keeps_the_partial_reply(peer_url: str, mode: str, said: str) -> None:
    events = run(peer_url, mode)
    assert [e.text for e in events if isinstance(e, TokenEvent)] == ["Hello", " there"]
    done = events[-1]
    assert isinstance(done, Done) and done.stop_reason == "error" and done.text == "Hello there"
    assert (
        done.notice is not None and said in done.notice and "partial reply is kept" in done.notice
    )


def test_a_read_timeout_names_request_timeout_s(peer_url: str) -> None:
    done = run(peer_url, "stall", timeout_s=1)[-1]
    assert isinstance(done, Done) and done.stop_reason == "error" and done.text == "Hello"
    assert done.notice is not None and "within request_timeout_s = 1 s" in done.notice


def test_cancel_closes_the_stream_at_once(peer_url: str) -> None:
    done = run(peer_url, "stall", cancel=threading.Event())[-1]
    # the server would have sent " there" after its stall: the stream was closed before
    assert isinstance(done, Done) and done.stop_reason == "cancelled" and done.text == "Hello"
