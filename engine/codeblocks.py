"""Fenced code blocks of a Markdown reply (``` or ~~~, CommonMark's rules for the fences)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_OPEN = re.compile(r"^( {0,3})(`{3,}|~{3,})\s*([^\s`]*)[^`]*$")


@dataclass(frozen=True)
class CodeBlock:
    language: str  # the fence's info word ("" when none)
    code: str  # the lines between the fences, without the last newline

    @property
    def lines(self) -> int:
        return self.code.count("\n") + 1 if self.code else 0

    def describe(self) -> str:
        """e.g. "python, 3 lines"."""
        plural = "" if self.lines == 1 else "s"
        return f"{self.language or 'no language'}, {self.lines} line{plural}"


def code_blocks(text: str) -> list[CodeBlock]:
    """The fenced blocks of `text` in order; an unclosed fence runs to the end (as a reply cut
    short leaves it)."""
    blocks: list[CodeBlock] = []
    fence: tuple[str, int, str] | None = None  # (fence char, its length, language)
    body: list[str] = []
    for line in text.split("\n"):
        if fence is None:
            opened = _OPEN.match(line)
            if opened:
                fence, body = (opened[2][0], len(opened[2]), opened[3]), []
            continue
        char, length, language = fence
        stripped = line.strip()
        if stripped and set(stripped) == {char} and len(stripped) >= length:
            blocks.append(CodeBlock(language, "\n".join(body)))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        blocks.append(CodeBlock(fence[2], "\n".join(body)))
    return blocks
