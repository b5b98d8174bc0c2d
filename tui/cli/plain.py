"""Headless front end: `llama-tui ask` and `llama-tui chat --plain` (no Textual here)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict
from typing import TextIO

from engine import (
    ChatSession,
    Done,
    Event,
    Profile,
    TokenEvent,
    UserError,
    load_profile_model,
    open_store,
    reply_record,
    saved_events,
    title_of,
)


def open_session(profile: Profile, show_progress: bool | None = None) -> ChatSession:
    """Load the profile's model (progress on stderr when it is a terminal) into a session."""
    if show_progress is None:
        show_progress = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if done == total or done % 16 == 0:
            print(f"\rloading model: {100 * done // total:3d}%", end="", file=sys.stderr)

    loaded = load_profile_model(profile, progress if show_progress else None)
    if loaded.weights_cache.startswith("not written"):  # e.g. a read-only cache folder
        print(f"llama-tui: note: weights cache {loaded.weights_cache}", file=sys.stderr)
    if show_progress:
        print(
            f"\rloaded {loaded.path.name} ({loaded.weights}, {loaded.device}) "
            f"in {loaded.load_s:.1f} s",
            file=sys.stderr,
        )
    return ChatSession(loaded, profile.system_prompt, profile.chat_format)


def stream(
    events: Iterator[Event], as_json: bool, out: TextIO, session: ChatSession | None = None
) -> Done:
    """Print a reply as it streams (or one JSON object at the end); returns the Done event.

    A trim or cut notice goes to stderr before the reply (text mode) or into the JSON record."""
    noticed = as_json
    for event in events:
        if not noticed and session is not None and session.last_notice:
            print(f"llama-tui: note: {session.last_notice}", file=sys.stderr, flush=True)
        noticed = True
        if isinstance(event, TokenEvent) and not as_json:
            out.write(event.text)
            out.flush()
        elif isinstance(event, Done):
            if as_json:
                out.write(json.dumps(reply_record(event, session), ensure_ascii=False) + "\n")
            else:
                out.write("\n" if event.stop_reason != "cancelled" else " [stopped]\n")
            out.flush()
            return event
    raise RuntimeError("generation ended without a Done event")


def run_ask(args: argparse.Namespace, profile: Profile) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    session = open_session(profile)
    s, n = profile.sampling, profile.max_new_tokens
    if profile.chat_template:
        events = session.send(prompt, s, n)
    else:
        events = session.complete(prompt, s, n)
    stream(events, args.json, sys.stdout, session)
    return 0


def run_chat(args: argparse.Namespace, profile: Profile) -> int:
    session = open_session(profile)
    interactive = sys.stdin.isatty() and not args.json
    if interactive:
        print("one line per turn; Ctrl-D quits, Ctrl-C stops a reply", file=sys.stderr)
    s, n = profile.sampling, profile.max_new_tokens
    store = None if getattr(args, "no_save", False) else open_store(args.data_dir)
    conv: int | None = None
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        text = line.rstrip("\n")
        if not text.strip():
            continue
        cancel = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_, c=cancel: c.set())  # Ctrl-C: stop reply
        try:
            if profile.chat_template:
                events = session.send(text, s, n, cancel)
            else:
                events = session.complete(text, s, n, cancel)
            if store is not None:
                if conv is None:
                    conv = store.new_conversation(title_of(text), asdict(profile))
                store.add_message(conv, "user", text)
                events = saved_events(events, store, conv)
            stream(events, args.json, sys.stdout, session)
        except UserError as exc:  # e.g. a prompt longer than the context: keep the chat alive
            print(f"llama-tui: error: {exc}", file=sys.stderr)
            if not interactive:
                return 2
        finally:
            signal.signal(signal.SIGINT, previous)
