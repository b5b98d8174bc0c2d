"""Line mode: `llama-tui ask` and `llama-tui chat --plain` (no Textual here).

Both run the engine queue and the chat controller the app runs (engine.Conversation), so saving,
trimming and notices behave the same; only the rendering differs: the reply on stdout as it
streams (or one JSON object per reply), notices and errors as one line each on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import TextIO

from engine import (
    STEP_NOT_BUILT,
    Backend,
    Conversation,
    Done,
    EngineQueue,
    Failed,
    LoadProgress,
    LoadRequest,
    ModelReady,
    Persona,
    Profile,
    ProfileBackend,
    ServerError,
    TokenEvent,
    Turn,
    TurnStarted,
    UserError,
    open_store,
    reply_record,
)
from tui.cli.signals import Hangup, Stopper
from tui.cli.slash import LineMode, run_line


def note(text: str, kind: str = "info") -> None:
    """One line on stderr: a notice, or (kind "error") an error that does not end the chat."""
    label = "error" if kind == "error" else "note"
    print(f"llama-tui: {label}: {text}", file=sys.stderr, flush=True)


def open_engine(
    profile: Profile, show_progress: bool | None = None, backend: Backend | None = None
) -> EngineQueue:
    """The engine queue with the profile's model loaded (progress on stderr when it is a
    terminal); UserError with the engine's one line when the model cannot be loaded."""
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    queue = EngineQueue(backend or ProfileBackend(max_loaded_models=1))
    for event in queue.submit(LoadRequest(profile)):
        if isinstance(event, Failed):
            queue.close()
            raise (ServerError if event.server else UserError)(event.message)
        if isinstance(event, ModelReady) and event.info.weights_cache.startswith("not written"):
            note(f"weights cache {event.info.weights_cache}")  # e.g. a read-only cache folder
        if show_progress:
            show_load(event)
    return queue


def show_load(event: object) -> None:
    if isinstance(event, LoadProgress) and (event.done == event.total or event.done % 16 == 0):
        print(f"\rloading model: {100 * event.done // event.total:3d}%", end="", file=sys.stderr)
    elif isinstance(event, ModelReady):
        info = event.info
        print(
            f"\rloaded {info.name} ({info.weights}, {info.device}) in {info.load_s:.1f} s",
            file=sys.stderr,
        )


def stream(chat: Conversation, turn: Turn, as_json: bool, out: TextIO) -> Done:
    """Print a reply as it streams (or one JSON object at the end); returns the Done event, or
    raises UserError with the engine's one line when the turn failed.

    A trim or cut notice goes to stderr before the reply (text mode) or into the JSON record."""
    for event in chat.events(turn.ticket):
        if isinstance(event, TurnStarted) and event.notice and not as_json:
            note(event.notice)
        elif isinstance(event, TokenEvent) and not as_json:
            out.write(event.text)
            out.flush()
        elif isinstance(event, Done):
            if as_json:
                record = reply_record(event, conversation=True)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                stopped = event.stop_reason in ("cancelled", "error")
                out.write(" [stopped]\n" if stopped else "\n")
            out.flush()
            if event.stop_reason == "error":  # the server failed mid-reply; the text is kept
                raise ServerError(event.notice or "the server failed mid-reply")
            return event
        elif isinstance(event, Failed):
            raise (ServerError if event.server else UserError)(event.message)
    raise RuntimeError("generation ended without a Done event")


def run_ask(args: argparse.Namespace, profile: Profile) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    # one reply: a compiled decode step already in the cache is used (5-10 ms to load); none is
    # built, as the process would end before the build (a chat or `llama-tui prepare` does)
    queue = open_engine(profile, backend=ProfileBackend(max_loaded_models=1, build_steps=False))
    try:
        chat = Conversation(queue, profile=profile)  # one turn, not saved
        step_note(stream(chat, chat.send(prompt), args.json, sys.stdout))
    finally:
        queue.close()
    return 0


def step_note(done: Done) -> bool:
    """On a terminal, after a reply of a process that builds no compiled step (`ask`, a chat
    reading a pipe): how `llama-tui prepare` would have made it faster, when it would have.
    Returns whether it said so."""
    if not sys.stderr.isatty():
        return False
    if done.metrics.decode_step == STEP_NOT_BUILT:
        note(
            "this reply decoded on the eager step: `llama-tui prepare` builds the compiled "
            "step once (about a minute on 2 cores), and later replies decode about 2x faster"
        )
    elif done.metrics.drafts_waited:
        note(
            "this reply made no speculative drafts: `llama-tui prepare` builds the compiled "
            "verify step they need once (about 2 minutes on 2 cores)"
        )
    else:
        return False
    return True


def run_chat(
    args: argparse.Namespace,
    profile: Profile,
    backend: Backend | None = None,
    personas: Mapping[str, Persona] | None = None,
) -> int:
    # reading a pipe, the chat ends with its input: like `ask`, it takes compiled steps from the
    # cache and builds none (a build is stopped, unfinished, when the process that wants it ends)
    piped = not sys.stdin.isatty()
    backend = backend or ProfileBackend(max_loaded_models=1, build_steps=not piped)
    queue = open_engine(profile, backend=backend)
    chat: Conversation | None = None
    try:
        store = None if getattr(args, "no_save", False) else open_store(args.data_dir)
        if store is not None and store.notice:  # moved aside, or opened read-only
            note(store.notice)
        chat = Conversation(queue, store, profile=profile, notify=note)
        with Stopper(queue, note) as stopper:
            code = chat_lines(chat, args.json, stopper, personas or {})
            return 128 + stopper.signum if stopper.signum else code
    except Hangup as hangup:  # SIGTERM or SIGHUP at the prompt
        return 128 + hangup.signum
    finally:
        end_chat(queue, chat)


def end_chat(queue: EngineQueue, chat: Conversation | None) -> None:
    """Stop the engine, feed the controller what a reply cut short (a second Ctrl-C) still had
    coming, so it is saved as stopped with its figures, then close the store."""
    queue.close(timeout=1.5)
    if chat is None:
        return
    for turn in list(chat.turns.values()):
        if turn.ticket.state == "finished":  # every event is queued: this does not block
            for _ in chat.events(turn.ticket):
                pass
    chat.close()


def chat_lines(
    chat: Conversation,
    as_json: bool,
    stopper: Stopper | None = None,
    personas: Mapping[str, Persona] | None = None,
) -> int:
    """One stdin line per turn, or a slash command (tui/cli/slash.py), until end of input."""
    noted = sys.stdin.isatty()  # a chat on a terminal builds its steps: nothing to say

    def reply(turn: Turn) -> Done:
        nonlocal noted
        done = stream(chat, turn, as_json, sys.stdout)
        noted = noted or step_note(done)  # once a chat
        return done

    mode = LineMode(chat, reply, note, personas or {}, chat.profile)
    interactive = sys.stdin.isatty() and not as_json
    if interactive:
        banner = (
            "one line per turn; /help lists the commands; Ctrl-D quits, Ctrl-C stops a reply"
            " (twice quits)"
        )
        print(banner, file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if stopper is not None:
            stopper.streaming = True  # Ctrl-C, SIGTERM and SIGHUP stop the reply
        try:
            run_line(mode, text)
        except UserError as exc:  # e.g. a system prompt longer than the context: keep chatting
            note(str(exc), "error")
            if not interactive:
                return 1 if isinstance(exc, ServerError) else 2
        finally:
            if stopper is not None:
                stopper.streaming = False
        if stopper is not None and stopper.signum is not None:
            return 128 + stopper.signum  # SIGTERM or SIGHUP: the stopped reply is saved


def run_models(profile: Profile) -> int:
    """`llama-tui models`: the ids a remote profile's server offers, one a line (the first is
    what remote_model = "" picks); a local profile prints the model it runs."""
    if profile.backend != "openai":
        print(profile.model or "(the embedded SmolLM2-135M-Instruct)")
        return 0
    from engine import RemoteClient  # httpx: imported for remote profiles only

    client = RemoteClient(profile.base_url, profile.api_key_env, profile.request_timeout_s)
    try:
        for entry in client.models():
            print(entry["id"])
    finally:
        client.close()
    return 0
