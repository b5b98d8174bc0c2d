"""`history import FILE.json`: our own export, or the OpenAI-style {"messages": [...]} shape,
checked into export-shaped data for ConversationStore.import_conversation.

Our export (store.export_json) comes back field for field, so exporting the imported copy gives
the same JSON but for its id. The OpenAI shape takes user and assistant messages (content a
string, or a list of {"type": "text", "text": ...} parts); a system message becomes the
profile's system_prompt. Every mistake is one UserError line naming the file and the place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.saving import title_of

ROLES = ("user", "assistant")
ATTACHMENT_KEYS = {"path": str, "size": int, "sha256": str, "tokens": int, "text": str}


def read_import(path: Path) -> dict[str, Any]:
    """The conversation in `path`, checked (UserError with one line when it is not one)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; an import is a .json file") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from None
    return check_import(data, str(path))


def check_import(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise UserError(
            f'{where}: expected a JSON object with a "messages" array (a llama-tui export, or '
            '{"messages": [{"role": ..., "content": ...}]})'
        )
    ours = "profile" in data and "title" in data
    return _ours(data, where) if ours else _openai(data, where)


def _ours(data: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(data["title"], str) or not isinstance(data["profile"], dict):
        raise UserError(f'{where}: "title" must be a string and "profile" an object')
    for key in ("created", "updated"):
        if key in data and not isinstance(data[key], int | float):
            raise UserError(f'{where}: "{key}" must be a number (seconds since 1970)')
    for key in ("parent_id", "forked_at"):
        if data.get(key) is not None and type(data[key]) is not int:
            raise UserError(f'{where}: "{key}" must be an integer or null')
    if data.get("persona") is not None and not isinstance(data["persona"], str):
        raise UserError(f'{where}: "persona" must be a string or null')
    for i, m in enumerate(data["messages"], 1):
        at = f"{where}: messages[{i}]"
        _message(m, at)
        if "created" in m and not isinstance(m["created"], int | float):
            raise UserError(f'{at}: "created" must be a number')
        if m.get("metrics") is not None and not isinstance(m["metrics"], dict):
            raise UserError(f'{at}: "metrics" must be an object or null')
        files = m.get("attachments", [])
        if not isinstance(files, list):
            raise UserError(f'{at}: "attachments" must be an array')
        for j, a in enumerate(files, 1):
            for key, kind in ATTACHMENT_KEYS.items():
                if not isinstance(a, dict) or type(a.get(key)) is not kind:
                    raise UserError(f'{at}.attachments[{j}]: "{key}" must be {kind.__name__}')
    return data


def _openai(data: dict[str, Any], where: str) -> dict[str, Any]:
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(data["messages"], 1):
        at = f"{where}: messages[{i}]"
        if isinstance(m, dict) and m.get("role") == "system":
            system.append(_text(m.get("content"), at))
            continue
        _message(m, at, openai=True)
        messages.append({"role": m["role"], "content": _text(m["content"], at)})
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    title = data.get("title") if isinstance(data.get("title"), str) else None
    profile = {"system_prompt": "\n\n".join(system)} if system else {}
    return {
        "title": title or title_of(first or Path(where).stem),
        "profile": profile,
        "messages": messages,
    }


def _message(m: Any, at: str, openai: bool = False) -> None:
    if not isinstance(m, dict):
        raise UserError(f"{at}: must be an object with role and content")
    if m.get("role") not in ROLES:
        roles = "system, user or assistant" if openai else "user or assistant"
        raise UserError(f"{at}: role {m.get('role')!r} is not {roles}")
    if not openai and not isinstance(m.get("content"), str):
        raise UserError(f'{at}: "content" must be a string')
    if not openai and "stopped" in m and not isinstance(m["stopped"], bool):
        raise UserError(f'{at}: "stopped" must be true or false')


def _text(content: Any, at: str) -> str:
    """A message's text: a string, or the text parts of a content array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise UserError(f'{at}: "content" must be a string or an array of text parts')
