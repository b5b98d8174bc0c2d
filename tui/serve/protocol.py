"""The OpenAI-compatible request fields `serve` takes, checked one by one, and its answers.

A wrong type or value is a RequestError naming the field (HTTP 400); unknown fields are ignored,
as OpenAI-compatible servers do. The answers follow OpenAI's shapes, with llama.cpp's `timings`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

from engine import GenerationMetrics, Message, SamplingSettings

ROLES = ("system", "user", "assistant")


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param, self.status = param, status


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _number(body: dict[str, Any], key: str, ok: Any, must: str, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        raise RequestError(f"{key} must be {'an integer' if integer else 'a number'}", key)
    if not math.isfinite(value) or not ok(value):
        raise RequestError(f"{key} = {value}: must be {must}", key)
    return value


# field -> (SamplingSettings key, check, what it must be, integer)
SAMPLING_FIELDS: dict[str, tuple[str, Any, str, bool]] = {
    "temperature": ("temperature", lambda v: 0 <= v <= 2, "in [0, 2]", False),
    "top_p": ("top_p", lambda v: 0 < v <= 1, "in (0, 1]", False),
    "top_k": ("top_k", lambda v: v >= 0, ">= 0", True),
    "min_p": ("min_p", lambda v: 0 <= v < 1, "in [0, 1)", False),
    "repeat_penalty": ("repeat_penalty", lambda v: v > 0, "> 0", False),
    "presence_penalty": ("presence_penalty", lambda v: -2 <= v <= 2, "in [-2, 2]", False),
    "frequency_penalty": ("frequency_penalty", lambda v: -2 <= v <= 2, "in [-2, 2]", False),
    "seed": ("seed", lambda v: 0 <= v < 2**64, "in [0, 2**64)", True),
    "mirostat": ("mirostat", lambda v: v in (0, 1, 2), "0, 1 or 2", True),
    "mirostat_tau": ("mirostat_tau", lambda v: v > 0, "> 0", False),
    "mirostat_eta": ("mirostat_eta", lambda v: v > 0, "> 0", False),
}


@dataclass(frozen=True)
class Common:
    """What chat and text completions share."""

    model: str
    stream: bool
    include_usage: bool
    token_ids: bool  # return_token_ids: each choice carries its token ids (vLLM's field)
    sampling: SamplingSettings
    max_tokens: int


def _bool(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"{key} must be true or false", key)
    return value


def common(body: Any, base: SamplingSettings, max_tokens: int, model: str) -> Common:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    name = body.get("model", model)
    if not isinstance(name, str):
        raise RequestError("model must be a string", "model")
    if body.get("n", 1) != 1:
        raise RequestError("n must be 1: one choice per request", "n")
    stream = _bool(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    include_usage = _bool(options, "include_usage")
    changes = {}
    for key, (field, ok, must, integer) in SAMPLING_FIELDS.items():
        value = _number(body, key, ok, must, integer)
        if value is not None:
            changes[field] = float(value) if not integer else int(value)
    n = max_tokens
    for key in ("max_completion_tokens", "max_tokens"):
        value = _number(body, key, lambda v: v >= 1, ">= 1", integer=True)
        if value is not None:
            n = int(value)
    return Common(
        name, stream, include_usage, _bool(body, "return_token_ids"), replace(base, **changes), n
    )


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError(f"{where}: only text content parts are supported", where)
            if not isinstance(part.get("text"), str):
                raise RequestError(f"{where}: a text part needs a string text", where)
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(f"{where} must be a string or a list of text parts", where)


def chat_messages(body: dict[str, Any]) -> tuple[Message, ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError("messages must be a non-empty array", "messages")
    messages = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object", where)
        role = m.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
        messages.append(Message(role, _content(m.get("content"), f"{where}.content")))
    if messages[-1].role != "user":
        raise RequestError("the last message must be the user's", "messages")
    return tuple(messages)


def completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise RequestError("prompt must be a non-empty string", "prompt")
    return prompt


def finish_reason(stop_reason: str) -> str:
    return "length" if stop_reason in ("length", "context") else "stop"


def usage(m: GenerationMetrics) -> dict[str, Any]:
    return {
        "prompt_tokens": m.prompt_tokens,
        "completion_tokens": m.generated_tokens,
        "total_tokens": m.prompt_tokens + m.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": m.cached_tokens},
    }


def timings(m: GenerationMetrics) -> dict[str, Any]:
    """llama.cpp's `timings` object."""
    predicted_s = m.decode_s + (m.ttft_s - m.prefill_s)
    return {
        "cache_n": m.cached_tokens,
        "prompt_n": m.computed_tokens,
        "prompt_ms": round(m.prefill_s * 1000, 3),
        "prompt_per_second": round(m.prefill_tok_s, 3),
        "predicted_n": m.generated_tokens,
        "predicted_ms": round(max(predicted_s, 0.0) * 1000, 3),
        "predicted_per_second": round(m.decode_tok_s, 3),
    }


def envelope(kind: str, request_id: str, model: str) -> dict[str, Any]:
    return {"id": request_id, "object": kind, "created": int(time.time()), "model": model}
