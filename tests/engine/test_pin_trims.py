"""A pinned early message through many trims of a small context (the tiny model, greedy)."""

from __future__ import annotations

from dataclasses import replace

from engine.config import SamplingSettings
from engine.events import Done
from engine.loaders import LoadedModel
from engine.session import ChatSession

GREEDY = SamplingSettings(temperature=0.0, seed=0)
KEY = "remember: the code is 42"


def turn(session: ChatSession, text: str) -> bool:
    """One turn; whether its prompt was trimmed."""
    [_] = [e for e in session.send(text, GREEDY, 6) if isinstance(e, Done)]
    return session.last_notice is not None and "left the context" in session.last_notice


def test_a_pinned_message_survives_20_trims_and_unpinning_lets_it_go(
    tiny_model: LoadedModel,
) -> None:
    small = replace(tiny_model, context_length=128)  # a trim every few turns
    session = ChatSession(small, chat_format="chatml")
    turn(session, KEY)
    session.pin(0)
    trims = turns = 0
    while trims < 20:
        turns += 1
        assert turns < 200
        if turn(session, f"filler turn {turns} with a few more words"):
            trims += 1
            assert session.visible(session.messages)[0].content == KEY  # still in context
            assert session.pinned == {0} and session.context_start > 2
            assert session.dropped_messages == session.context_start - 1
    session.pin(0, pinned=False)
    for n in range(8):  # the next trim lets it go
        if turn(session, f"after unpinning {n}"):
            break
    else:
        raise AssertionError("no trim in 8 turns")
    assert KEY not in [m.content for m in session.visible(session.messages)]
    assert session.pinned == set() and session.dropped_messages == session.context_start
