"""Token-aware trimming: which old turns leave the context when the next prompt would not fit.

The prompt budget is ``context_length - max_new_tokens``. When a prompt exceeds it, whole
user+assistant pairs are dropped from the oldest end -- never the system prompt, never the
newest user message, never a pinned message -- down to ``TARGET_FRACTION`` of the budget, so
the next several turns fit again and reuse the (shifted) KV cache instead of trimming each turn.

A newest user message too long for the budget on its own is cut at token level: it keeps its
start (``HEAD_FRACTION`` of the room: the instruction, "summarise this:") and its end (the rest:
the text nearest the question), and loses its middle. Raw completion keeps a prompt's most recent
tokens. Only what the model sees is cut; the history keeps the full text.
Pure functions: the session supplies exact token counts from its chat formatter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

TARGET_FRACTION = 0.75  # after a trim the prompt takes at most this share of the budget
HEAD_FRACTION = 0.25  # a cut message keeps this share of its room from its start
CUT_MARKER = "\n[...]\n"  # stands where a cut message lost its middle


def prompt_budget(context_length: int, max_new_tokens: int) -> int:
    """Tokens a prompt may take: room is left for a reply, but never more than half the context
    (a reply longer than that stops with stop_reason "context" instead)."""
    return context_length - min(max_new_tokens, context_length // 2)


def choose_cut(
    prompt_len: Callable[[int], int],
    cut_points: Sequence[int],
    budget: int,
    target_fraction: float = TARGET_FRACTION,
) -> int:
    """Pick a cut point from ``cut_points`` (ascending; the first means "drop nothing").

    ``prompt_len(c)`` is the prompt's token count when the droppable messages before index c
    are dropped. Nothing is dropped while the prompt fits the budget; otherwise the smallest
    cut that brings it under ``target_fraction * budget``, else the last (drop all droppable).
    """
    if prompt_len(cut_points[0]) <= budget:
        return cut_points[0]
    target = int(budget * target_fraction)
    for c in cut_points[1:]:
        if prompt_len(c) <= target:
            return c
    return cut_points[-1]


def pair_cut_points(roles: Sequence[str], keep_first: int) -> list[int]:
    """Indexes where a cut keeps whole pairs: keep_first, each later user message, and the
    newest user message (the last index, which is never dropped)."""
    last = len(roles) - 1
    points = [keep_first]
    points += [i for i in range(keep_first + 1, last) if roles[i] == "user"]
    if last > keep_first:
        points.append(last)
    return points


def kept_indexes(
    n: int, cut: int, pinned: frozenset[int] | set[int], keep_first: int = 0
) -> list[int]:
    """Indexes of the n messages still in context after a cut at ``cut``."""
    return [i for i in range(n) if not keep_first <= i < cut or i in pinned]


def split_keep(n: int, keep: int, head_fraction: float = HEAD_FRACTION) -> tuple[int, int]:
    """Tokens a message of n tokens keeps from its start and from its end to fit ``keep``."""
    if n <= keep:
        return n, 0
    keep = max(keep, 0)
    head = int(keep * head_fraction)
    return head, keep - head


def keep_recent(ids: Sequence[int], budget: int, keep_first: int = 0) -> list[int]:
    """The first ``keep_first`` ids (a BOS) and the most recent ones, ``budget`` in all."""
    if len(ids) <= budget:
        return list(ids)
    tail = max(budget - keep_first, 0)
    return list(ids[:keep_first]) + list(ids[len(ids) - tail :])
