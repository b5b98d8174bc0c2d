"""Files into the context: a text file read, checked and wrapped as part of a user message.

The controller (engine/conversation.py) counts the wrapped text's tokens with the active model
and refuses a file larger than what the context has left; the store keeps each attachment's
path, size, hash and the exact text that was sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import UserError

MAX_BYTES = 8 * 1024 * 1024  # read no further: no context holds this much text
BINARY_PROBE = 8192  # a NUL byte in this many first bytes: a binary file


@dataclass(frozen=True)
class Attachment:
    path: str  # absolute, as read
    size: int  # bytes
    sha256: str  # of the bytes read
    text: str  # the file's text
    tokens: int = 0  # of `wrapped`, as the active model counts them (0: not counted yet)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def wrapped(self) -> str:
        """What the model is given: the text between lines naming the file."""
        return f'<file name="{self.name}">\n{self.text}\n</file>'

    def describe(self) -> str:
        """e.g. "notes.txt · 63 B · 21 tokens"."""
        return f"{self.name} · {human_size(self.size)} · {self.tokens:,} tokens"

    def record(self) -> dict[str, object]:
        """As `history export --format json` writes it (and `history import` reads it)."""
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "tokens": self.tokens,
            "text": self.text,
        }

    def counted(self, tokens: int) -> Attachment:
        return replace(self, tokens=tokens)


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"


def read_attachment(path: Path) -> Attachment:
    """The text file at `path`; UserError (one line) when it is missing, a folder, unreadable,
    binary or not UTF-8."""
    path = path.expanduser()
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; give a file") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise UserError(f"{path}: over {human_size(MAX_BYTES)}, more than any context holds")
    if b"\0" in data[:BINARY_PROBE]:
        raise UserError(f"{path}: a binary file; only text files go into the context")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; only text files go into the context") from None
    digest = hashlib.sha256(data).hexdigest()
    return Attachment(str(path.resolve()), len(data), digest, text.removeprefix("\ufeff"))


def with_attachments(text: str, attachments: tuple[Attachment, ...]) -> str:
    """The user message the model gets: each file, then what the user typed."""
    return "\n\n".join([*(a.wrapped for a in attachments), text])


def typed_part(content: str, attachments: tuple[Attachment, ...]) -> str:
    """What the user typed, out of a user message built by with_attachments (the whole
    message when it was not built from these files)."""
    if not attachments:
        return content
    files = with_attachments("", attachments)
    return content.removeprefix(files) if content.startswith(files) else content
