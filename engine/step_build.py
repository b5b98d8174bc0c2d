"""The compiled decode step's build process: ``python -m engine.step_build``.

engine/compiled.py starts it when the step's package is not in the cache. It reads one JSON
object on standard input: ``source`` (the profile keys that load_profile_model reads),
``package`` (where to write), ``key`` (the step_key the model it loads must give too),
``tokens`` (1, or a verify step's count) and ``threads`` (the chat's intra-op threads). It loads
the model as the chat did (the prepared-weights cache maps the same file, so the pages are
shared), builds the package at low CPU priority, and ends when the process that started it goes
away. Exit 0 once the package is written; otherwise one line on standard error says why.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

NICE = 10  # below the chat: the scheduler gives a reply's decoding the cores first


def stop_with(parent: int) -> None:
    """End this process once ``parent`` has gone (a build for a chat that ended is waste)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="llama-tui-build-watch", daemon=True).start()


def build(request: dict[str, Any]) -> None:
    import torch

    from engine.compiled import build_package, step_key
    from engine.config import Profile
    from engine.loaders import load_profile_model

    torch.set_num_threads(int(request["threads"]))
    source = dict(request["source"])
    source["offload_exclusion"] = tuple(source.get("offload_exclusion", ()))
    profile = Profile(name="step-build", **{**source, "compile": False})
    model = load_profile_model(profile).model
    if step_key(model) != request["key"]:
        raise RuntimeError("the build process loaded a model other than the chat's")
    build_package(model, Path(request["package"]), int(request.get("tokens", 1)))


def main() -> int:
    stop_with(os.getppid())
    try:
        os.nice(NICE)
    except OSError:
        pass  # the priority is a courtesy
    try:
        build(json.loads(sys.stdin.read()))
    except Exception as exc:  # noqa: BLE001 - the parent reads one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
