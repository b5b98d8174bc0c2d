"""`llama-tui serve`: load the profile's model, then answer HTTP on loopback until Ctrl-C,
SIGTERM or SIGHUP (each cancels the running reply first: the process leaves within ~1 s)."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import Any

import uvicorn

from engine import (
    EngineQueue,
    Failed,
    LoadRequest,
    LocalBackend,
    ModelInfo,
    ModelReady,
    Profile,
    UserError,
    api_key,
)


def load(queue: EngineQueue, profile: Profile) -> ModelInfo:
    for event in queue.submit(LoadRequest(profile)):
        if isinstance(event, Failed):
            raise UserError(event.message)
        if isinstance(event, ModelReady):
            return event.info
    raise UserError("the engine ended the load without a model")


def run_serve(args: argparse.Namespace, profile: Profile) -> int:
    from tui.serve.app import make_app

    if profile.backend != "local":
        raise UserError(
            f"profile {profile.name} has backend = {profile.backend!r}: serve runs the local "
            "engine; pick a local profile"
        )
    key = api_key(args.api_key_env, "--api-key-env")  # the bearer key; None: none required
    queue = EngineQueue(LocalBackend(max_loaded_models=1))
    try:
        info = load(queue, profile)
        where = f"http://{args.host}:{args.port}/v1"
        auth = f", bearer key from ${args.api_key_env}" if key else ", no API key"
        print(f"llama-tui: serving {info.name} ({info.device}) at {where}{auth}", file=sys.stderr)
        app = make_app(queue, profile, info, key)
        config = uvicorn.Config(
            app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=1
        )
        server = Stopping(config, queue)
        previous = {
            s: signal.signal(s, server.note_signal) for s in (signal.SIGTERM, signal.SIGHUP)
        }
        try:
            server.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        queue.close(timeout=1.0)
    return 0


class Stopping(uvicorn.Server):
    """uvicorn's server whose shutdown (Ctrl-C, SIGTERM, and here SIGHUP too) first cancels the
    running reply, so a streaming client gets its last chunk and the process leaves in ~1 s."""

    def __init__(self, config: Any, queue: EngineQueue) -> None:
        super().__init__(config)
        self.queue = queue

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.queue.cancel_all()
        super().handle_exit(sig, frame)

    def note_signal(self, sig: int, frame: FrameType | None) -> None:
        """SIGHUP at any time; SIGTERM again after uvicorn's shutdown re-raises it: stop, once."""
        if not self.should_exit:
            self.handle_exit(sig, frame)
