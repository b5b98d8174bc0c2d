"""Pilot: a remote profile (llama-cpp-python's server on loopback) in the real app: a reply
streams, the metrics say who measured what, the server going away is a notice, and switching
back to a local profile keeps the conversation."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from textual.widgets import Label, Select

from tests.peers import free_port, llama_cpp_argv, running
from tests.tui.conftest import TINY_CONFIG
from tests.tui.test_app import backend, idle, say, wait_for
from tui.app.app import make_app
from tui.app.widgets.config_pane import ConfigPane
from tui.app.widgets.message import AssistantMessage
from tui.app.widgets.metrics_pane import metric_lines
from tui.app.widgets.prompt import PromptInput

pytestmark = pytest.mark.slow

REMOTE = """
[profiles.far]
backend = "openai"
base_url = "{url}"
request_timeout_s = 30
temperature = 0.0
max_new_tokens = 8
"""


async def test_remote_profile_streams_survives_the_server_and_switches_back(
    tmp_path: Path, tiny_gguf: Path, default_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "llama-tui.toml"
    url = f"http://127.0.0.1:{port}/v1"
    config.write_text(TINY_CONFIG.format(model=tiny_gguf.as_posix()) + REMOTE.format(url=url))
    with running(llama_cpp_argv(default_path, port), port) as peer:
        app = make_app("far", config, cursor_blink=False)
        async with app.run_test(size=(140, 40)) as pilot:
            await wait_for(pilot, idle(app), timeout=60)
            info = app.chat.profiles.info
            assert info is not None and info.device == f"remote: 127.0.0.1:{port}"
            first = await say(pilot, "Say hello.")
            assert first.text and backend(app).loads == 0  # nothing loaded locally
            rows = metric_lines(app.chat.stats)
            labels = [k for k, _ in rows]
            at = labels.index("source")
            assert rows[at][1] == "client: TTFT, decode" and rows[at + 1][1] == "server: nothing"
            pane = app.chat.query_one(ConfigPane)
            assert str(pane.query_one("#key-repeat_last_n", Label).render()) == "repeat_last_n*"
            assert str(pane.query_one("#key-top_k", Label).render()) == "top_k"
            assert f"server {url}" in " ".join(str(pane.query_one("#effective").render()).split())

            peer.proc.kill()  # the server goes away
            peer.proc.wait()
            failed = await say(pilot, "Are you there?")
            assert failed.status.startswith(f"failed: cannot connect to {url}"), failed.status
            prompt = app.chat.query_one(PromptInput)
            assert prompt.text == "Are you there?"  # given back, to send again
            prompt.text = ""

            app.chat.profiles.switch("tiny")  # back to the local engine, live
            await wait_for(pilot, idle(app), timeout=60)
            assert backend(app).loads == 1
            await pilot.pause(0.1)
            assert str(pane.query_one("#key-repeat_last_n", Label).render()) == "repeat_last_n"
            reply = await say(pilot, "and locally?")
            assert reply.text and first in app.chat.query(AssistantMessage)
            session = backend(app).session
            assert session is not None and session.messages[0].content == "Say hello."


def two_model_peer(port: int) -> uvicorn.Server:
    """A stand-in for a server offering two models (llama-cpp-python's and our `serve` offer
    one): /v1/models lists both, and each reply names the model the request asked for."""

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "alpha"}, {"id": "beta"}]})

    async def chat(request: Request) -> Response:
        model = (await request.json())["model"]

        async def events() -> AsyncIterator[dict[str, str]]:
            for text in ("I am ", model):
                delta = {"choices": [{"index": 0, "delta": {"content": text}}]}
                yield {"data": json.dumps(delta)}
            yield {"data": "[DONE]"}

        return EventSourceResponse(events())

    routes = [Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])]
    config = uvicorn.Config(Starlette(routes=routes), "127.0.0.1", port, log_level="error")
    return uvicorn.Server(config)


async def test_the_config_pane_lists_the_servers_models_and_picks_one(
    tmp_path: Path, tiny_gguf: Path
) -> None:
    port = free_port()
    server = two_model_peer(port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            await asyncio.sleep(0.05)
        config = tmp_path / "llama-tui.toml"
        url = f"http://127.0.0.1:{port}/v1"
        config.write_text(TINY_CONFIG.format(model=tiny_gguf.as_posix()) + REMOTE.format(url=url))
        app = make_app("far", config, cursor_blink=False)
        async with app.run_test(size=(140, 40)) as pilot:
            await wait_for(pilot, idle(app), timeout=30)
            picker = app.chat.query_one("#server-model", Select)
            assert picker.display and picker.value == "alpha"  # remote_model = "": the first
            assert (await say(pilot, "who?")).text == "I am alpha"

            picker.value = "beta"  # as the user picks it in the list
            await wait_for(pilot, lambda: getattr(app.chat.profiles.info, "name", "") == "beta")
            await wait_for(pilot, idle(app))
            assert app.chat.controller.profile is not None
            assert app.chat.controller.profile.remote_model == "beta"
            assert (await say(pilot, "and now?")).text == "I am beta"

            app.chat.profiles.switch("tiny")  # a local profile: no server models to pick
            await wait_for(pilot, lambda: getattr(app.chat.profiles.info, "name", "") != "beta")
            await wait_for(pilot, idle(app), timeout=60)
            await pilot.pause(0.1)
            assert not picker.display
    finally:
        server.should_exit = True
        thread.join(10)
