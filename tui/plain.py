"""Headless front end: `llama-tui ask` and `llama-tui chat --plain` (no Textual here)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from engine.config import Profile, find_config_path, load_config, resolve_profile
from engine.errors import UserError
from engine.events import Done, Event, TokenEvent
from engine.loaders import load_profile_model
from engine.session import ChatSession


def load_profile(args: argparse.Namespace) -> Profile:
    from tui.cli import overrides_from

    config = load_config(find_config_path(args.config))
    return resolve_profile(config, args.profile, overrides_from(args))


def open_session(profile: Profile, show_progress: bool | None = None) -> ChatSession:
    """Load the profile's model (progress on stderr when it is a terminal) into a session."""
    if show_progress is None:
        show_progress = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if done == total or done % 16 == 0:
            print(f"\rloading model: {100 * done // total:3d}%", end="", file=sys.stderr)

    loaded = load_profile_model(profile, progress if show_progress else None)
    if show_progress:
        print(
            f"\rloaded {loaded.path.name} ({loaded.weights}, {loaded.device}) "
            f"in {loaded.load_s:.1f} s",
            file=sys.stderr,
        )
    return ChatSession(loaded, profile.system_prompt, profile.chat_format)


def reply_record(done: Done, session: ChatSession | None = None) -> dict[str, Any]:
    m = done.metrics
    record: dict[str, Any] = {
        "text": done.text,
        "token_ids": done.token_ids,
        "prompt_tokens": m.prompt_tokens,
        "cached_tokens": m.cached_tokens,
        "generated_tokens": m.generated_tokens,
        "ttft_s": round(m.ttft_s, 4),
        "prefill_tok_s": round(m.prefill_tok_s, 2),
        "decode_tok_s": round(m.decode_tok_s, 2),
        "context_used": m.context_used,
        "context_limit": m.context_limit,
        "stop_reason": done.stop_reason,
        "context_tokens": m.context_used,  # tokens in context after the turn
        "computed_tokens": m.computed_tokens,  # prompt tokens run through the model this turn
    }
    if session is not None:
        record["dropped_messages"] = session.dropped_messages  # messages outside the context
        if session.last_notice:
            record["notice"] = session.last_notice
    return record


def stream(
    events: Iterator[Event], as_json: bool, out: TextIO, session: ChatSession | None = None
) -> Done:
    """Print a reply as it streams (or one JSON object at the end); returns the Done event."""
    for event in events:
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


def run_ask(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    profile = load_profile(args)
    session = open_session(profile)
    s, n = profile.sampling, profile.max_new_tokens
    if profile.chat_template:
        events = session.send(prompt, s, n)
    else:
        events = session.complete(prompt, s, n)
    stream(events, args.json, sys.stdout, session)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    profile = load_profile(args)
    session = open_session(profile)
    interactive = sys.stdin.isatty() and not args.json
    if interactive:
        print("one line per turn; Ctrl-D quits, Ctrl-C stops a reply", file=sys.stderr)
    s, n = profile.sampling, profile.max_new_tokens
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
                stream(session.send(text, s, n, cancel), args.json, sys.stdout, session)
            else:
                stream(session.complete(text, s, n, cancel), args.json, sys.stdout)
        except UserError as exc:  # e.g. a prompt longer than the context: keep the chat alive
            print(f"llama-tui: error: {exc}", file=sys.stderr)
            if not interactive:
                return 2
        finally:
            signal.signal(signal.SIGINT, previous)
