"""Line mode's slash commands: /help, /pin N, /unpin N, /continue, /file PATH, /persona NAME.

A line that starts with "/" but names no command is sent as typed, after a one-line hint;
"//" sends a literal slash ("//etc/hosts" sends "/etc/hosts"). No Textual here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine import (
    Conversation,
    Done,
    Failed,
    Persona,
    Pinned,
    Profile,
    Turn,
    UserError,
    apply_persona,
)

PIN_USAGE = "/pin N keeps message N in context whatever trimming drops, /unpin N lets it go"
COMMANDS = {  # name -> (its argument, what it does), as /help lists them
    "/help": ("", "list these commands"),
    "/pin": ("N", "keep message N (from 1, replies included) in context whatever trimming drops"),
    "/unpin": ("N", "let pinned message N leave the context again"),
    "/continue": ("", "go on with the last reply where it stopped (length, or Ctrl-C)"),
    "/file": ("PATH", "put a text file into your next message (its tokens are counted first)"),
    "/persona": ("[NAME|none]", "use a [prompts.NAME] system prompt; no NAME lists them"),
}


@dataclass
class LineMode:
    """What the commands act on: the chat, how a reply is printed, how a note is printed."""

    chat: Conversation
    stream: Callable[[Turn], Done]  # print a turn's reply as line mode does
    note: Callable[[str], None]  # one line on stderr
    personas: Mapping[str, Persona] = field(default_factory=dict)
    base: Profile | None = None  # the profile without a persona


def run_line(mode: LineMode, text: str) -> None:
    """One input line: a command, or a message sent with the files attached to it. UserError
    (one line) for a command that cannot be done."""
    if text.startswith("//"):
        mode.stream(mode.chat.send(text[1:]))
        return
    word, _, rest = text.partition(" ")
    if not text.startswith("/"):
        mode.stream(mode.chat.send(text))
    elif word not in COMMANDS:
        mode.note(f"{word} is not a command (/help lists them; // sends a slash): sent as typed")
        mode.stream(mode.chat.send(text))
    elif word == "/help":
        width = max(len(f"{name} {arg}") for name, (arg, _) in COMMANDS.items())
        for name, (arg, what) in COMMANDS.items():
            mode.note(f"{f'{name} {arg}'.ljust(width)}  {what}")
        mode.note("a line starting with // sends a literal slash")
    elif word in ("/pin", "/unpin"):
        pin(mode, text.split(), word == "/pin")
    elif word == "/continue":
        mode.stream(mode.chat.continue_reply())
    elif word == "/file":
        attach(mode, rest.strip())
    else:
        persona(mode, rest.strip())


def pin(mode: LineMode, words: list[str], pinned: bool) -> None:
    """`/pin N` or `/unpin N`: N counts the conversation's messages from 1 (replies included)."""
    if len(words) != 2 or not words[1].isdigit():
        raise UserError(f"usage: {PIN_USAGE}")
    number = int(words[1])
    chat = mode.chat
    for event in chat.events(chat.pin(number - 1, pinned)):
        if isinstance(event, Failed):
            raise UserError(event.message)
        if isinstance(event, Pinned):
            how = "pinned: trimming keeps it in context" if pinned else "unpinned"
            mode.note(f"message {number} {how}")


def attach(mode: LineMode, path: str) -> None:
    if not path:
        raise UserError("usage: /file PATH puts a text file into your next message")
    file = mode.chat.attach(Path(path))
    mode.note(f"attached {file.describe()}: it goes with your next message")


def persona(mode: LineMode, name: str) -> None:
    """`/persona NAME` switches to a persona (none: back to the profile's own prompt); with no
    NAME, the personas of the config file."""
    chat, personas = mode.chat, mode.personas
    if not name:
        if not personas:
            mode.note(
                'no personas: add [prompts.NAME] tables with system = "..." to llama-tui.toml'
            )
        for p in personas.values():
            mark = "* " if p.name == chat.persona else "  "
            mode.note(f"{mark}{p.name}: {p.system or '(no system prompt)'}")
        return
    if name != "none" and name not in personas:
        known = ", ".join(personas) or "none in the config file"
        raise UserError(f"no persona '{name}' ([prompts.{name}]); personas: {known}")
    chosen = personas.get(name)
    base = mode.base or chat.profile
    if base is None:
        raise UserError("no profile is loaded yet")
    profile = apply_persona(base, chosen)
    for event in chat.events(chat.load(profile)):
        if isinstance(event, Failed):
            raise UserError(event.message)
    chat.profile = profile
    chat.set_persona(chosen.name if chosen else None)
    if chosen is None:
        mode.note("persona off: the profile's own system prompt")
    else:
        extra = "".join(f", {k} = {v}" for k, v in chosen.sampling.items())
        mode.note(f"persona {chosen.name}: its system prompt{extra}")
