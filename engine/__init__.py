"""llama-tui's engine: pure PyTorch, never imports Textual.

The public API, re-exported for the front ends (TUI, headless CLI, benchmark, tests).
"""

from engine.backend import Backend, GenerationRequest, LocalBackend, ModelInfo
from engine.chat_format import Message
from engine.config import Config, Profile, SamplingSettings, load_config, resolve_profile
from engine.errors import ConfigError, ContextOverflowError, ModelLoadError, UserError
from engine.events import Done, Event, Failed, LoadProgress, PrefillDone, TokenEvent
from engine.loaders import LoadedModel, load_model
from engine.metrics import GenerationMetrics
from engine.queue import (
    ClearRequest,
    EngineQueue,
    LoadRequest,
    MemoryStats,
    ModelReady,
    Started,
    Ticket,
)
from engine.session import ChatSession

__all__ = [
    "Backend",
    "ClearRequest",
    "EngineQueue",
    "GenerationRequest",
    "LoadRequest",
    "LocalBackend",
    "MemoryStats",
    "ModelInfo",
    "ModelReady",
    "Started",
    "Ticket",
    "ChatSession",
    "Config",
    "ConfigError",
    "ContextOverflowError",
    "Done",
    "Event",
    "Failed",
    "GenerationMetrics",
    "LoadProgress",
    "LoadedModel",
    "Message",
    "ModelLoadError",
    "PrefillDone",
    "Profile",
    "SamplingSettings",
    "TokenEvent",
    "UserError",
    "load_config",
    "load_model",
    "resolve_profile",
]
