"""`llama-tui serve`: load the profile's model, then answer HTTP on loopback until Ctrl-C."""

from __future__ import annotations

import argparse
import sys

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
    import uvicorn

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
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        queue.close()
    return 0
