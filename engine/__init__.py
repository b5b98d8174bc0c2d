"""llama-tui's engine: pure PyTorch, never imports Textual.

This module is the public API: the front ends (the app, the command line, the benchmarks)
import only from here, and an import-linter contract checks it (pyproject.toml).
"""

from engine.args import ModelArgs
from engine.backend import Backend, GenerationRequest, LocalBackend, ModelInfo
from engine.chat_format import Message, encode_dialog
from engine.compiled import compile_decode_step
from engine.config import (
    DEFAULTS_NAME,
    Config,
    Profile,
    SamplingSettings,
    find_config_path,
    load_config,
    profile_to_dict,
    resolve_profile,
    sampling_changed_only,
)
from engine.conversation import Conversation, Turn
from engine.default_model import default_model_path
from engine.errors import ConfigError, ContextOverflowError, ModelLoadError, UserError
from engine.events import (
    Done,
    Event,
    Failed,
    LoadProgress,
    Pinned,
    PrefillDone,
    TokenEvent,
    TurnStarted,
)
from engine.generate import decode_one_token, generate, prefill
from engine.kv_cache import KVCache
from engine.loaders import LoadedModel, load_model, load_profile_model
from engine.loaders.state import assign_state
from engine.metrics import GenerationMetrics, peak_rss_bytes, rss_bytes
from engine.model import Transformer
from engine.offload import streamer_of
from engine.placement import resolve_device, resolve_placement
from engine.queue import (
    ClearRequest,
    EngineQueue,
    LoadRequest,
    MemoryStats,
    ModelReady,
    PinRequest,
    QueueEvent,
    Request,
    Started,
    Ticket,
)
from engine.saving import reply_record, title_of
from engine.session import ChatSession
from engine.store import ConversationStore, data_dir, open_store

__all__ = [
    "DEFAULTS_NAME",
    "Backend",
    "ChatSession",
    "ClearRequest",
    "Config",
    "ConfigError",
    "ContextOverflowError",
    "Conversation",
    "ConversationStore",
    "Done",
    "EngineQueue",
    "Event",
    "Failed",
    "GenerationMetrics",
    "GenerationRequest",
    "KVCache",
    "LoadProgress",
    "LoadRequest",
    "LoadedModel",
    "LocalBackend",
    "MemoryStats",
    "Message",
    "ModelArgs",
    "ModelInfo",
    "ModelLoadError",
    "ModelReady",
    "PinRequest",
    "Pinned",
    "PrefillDone",
    "Profile",
    "QueueEvent",
    "Request",
    "SamplingSettings",
    "Started",
    "Ticket",
    "TokenEvent",
    "Transformer",
    "Turn",
    "TurnStarted",
    "UserError",
    "assign_state",
    "data_dir",
    "compile_decode_step",
    "decode_one_token",
    "default_model_path",
    "encode_dialog",
    "find_config_path",
    "generate",
    "load_config",
    "load_model",
    "load_profile_model",
    "open_store",
    "peak_rss_bytes",
    "prefill",
    "profile_to_dict",
    "reply_record",
    "resolve_device",
    "resolve_placement",
    "resolve_profile",
    "rss_bytes",
    "sampling_changed_only",
    "streamer_of",
    "title_of",
]
