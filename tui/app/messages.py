"""Messages that cross widgets: the engine bridge, the prompt and the config pane."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from engine import QueueEvent


@dataclass
class EngineUpdate(Message):
    """Events from one engine ticket, in order; several are batched when they arrive at once."""

    ticket_id: int
    events: list[QueueEvent]
    finished: bool = False  # the ticket's stream ended (after its last event)


@dataclass
class PromptSubmitted(Message):
    text: str


@dataclass
class ProfilePicked(Message):
    name: str


@dataclass
class SettingEdited(Message):
    key: str  # a key of engine.config.KEYS
    text: str  # as typed; validated by the screen
