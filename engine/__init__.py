"""llama-tui's engine: pure PyTorch, never imports Textual.

This module is the public API: the front ends (the app, the command line, the benchmarks)
import only from here, and an import-linter contract checks it (pyproject.toml).

Names are imported on first use (PEP 562 ``__getattr__``): ``llama-tui --help`` or ``history``
never import torch, and ``import engine`` does no work at all.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.args import ModelArgs
    from engine.attachments import Attachment
    from engine.backend import Backend, GenerationRequest, ModelInfo, TokenizeRequest
    from engine.background import background_busy
    from engine.chat_format import Message, encode_dialog
    from engine.codeblocks import CodeBlock, code_blocks
    from engine.compiled import compile_decode_step, compile_supported, compile_wanted
    from engine.config import (
        DEFAULTS_NAME,
        Config,
        Persona,
        Profile,
        SamplingSettings,
        apply_persona,
        find_config_path,
        load_config,
        profile_to_dict,
        resolve_profile,
        sampling_changed_only,
    )
    from engine.conversation import Conversation, SavedMessage, Turn
    from engine.cpu_load import BUSY_SHOWN, Stamp, other_load
    from engine.default_model import default_model_path
    from engine.dense_prefill import dense_prefill_rows
    from engine.energy import EnergyReading
    from engine.errors import (
        ConfigError,
        ContextOverflowError,
        ModelLoadError,
        ServerError,
        UserError,
        first_line,
    )
    from engine.events import (
        Done,
        Event,
        Failed,
        LoadProgress,
        Pinned,
        PrefillDone,
        TokenEvent,
        Tokens,
        TurnStarted,
    )
    from engine.generate import decode_one_token, generate, prefill
    from engine.history import prompt_budget
    from engine.importing import read_import
    from engine.kv_cache import KVCache
    from engine.loaders import LoadedModel, load_model, load_profile_model
    from engine.loaders.state import assign_state
    from engine.local import LocalBackend
    from engine.metrics import STEP_NOT_BUILT, GenerationMetrics, peak_rss_bytes, rss_bytes
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
    from engine.remote.backend import REMOTE_UNSENT, RemoteBackend
    from engine.remote.client import RemoteClient, api_key
    from engine.routing import ProfileBackend
    from engine.saving import reply_record, title_of
    from engine.session import ChatSession
    from engine.store import MARK, ConversationStore, data_dir, open_store
    from engine.timings import PHASES, ReplyTimings

# public name -> the module that defines it
_EXPORTS = {
    "Attachment": "engine.attachments",
    "CodeBlock": "engine.codeblocks",
    "code_blocks": "engine.codeblocks",
    "Persona": "engine.config",
    "apply_persona": "engine.config",
    "read_import": "engine.importing",
    "MARK": "engine.store",
    "REMOTE_UNSENT": "engine.remote.backend",
    "ServerError": "engine.errors",
    "first_line": "engine.errors",
    "TokenizeRequest": "engine.backend",
    "Tokens": "engine.events",
    "prompt_budget": "engine.history",
    "RemoteBackend": "engine.remote.backend",
    "RemoteClient": "engine.remote.client",
    "api_key": "engine.remote.client",
    "ProfileBackend": "engine.routing",
    "Backend": "engine.backend",
    "ChatSession": "engine.session",
    "ClearRequest": "engine.queue",
    "compile_decode_step": "engine.compiled",
    "background_busy": "engine.background",
    "compile_supported": "engine.compiled",
    "compile_wanted": "engine.compiled",
    "dense_prefill_rows": "engine.dense_prefill",
    "Config": "engine.config",
    "ConfigError": "engine.errors",
    "ContextOverflowError": "engine.errors",
    "Conversation": "engine.conversation",
    "SavedMessage": "engine.conversation",
    "ConversationStore": "engine.store",
    "DEFAULTS_NAME": "engine.config",
    "Done": "engine.events",
    "EngineQueue": "engine.queue",
    "Event": "engine.events",
    "Failed": "engine.events",
    "GenerationMetrics": "engine.metrics",
    "GenerationRequest": "engine.backend",
    "KVCache": "engine.kv_cache",
    "LoadProgress": "engine.events",
    "LoadRequest": "engine.queue",
    "LoadedModel": "engine.loaders",
    "LocalBackend": "engine.local",
    "MemoryStats": "engine.queue",
    "Message": "engine.chat_format",
    "ModelArgs": "engine.args",
    "ModelInfo": "engine.backend",
    "ModelLoadError": "engine.errors",
    "ModelReady": "engine.queue",
    "PinRequest": "engine.queue",
    "BUSY_SHOWN": "engine.cpu_load",
    "EnergyReading": "engine.energy",
    "PHASES": "engine.timings",
    "ReplyTimings": "engine.timings",
    "Stamp": "engine.cpu_load",
    "other_load": "engine.cpu_load",
    "Pinned": "engine.events",
    "PrefillDone": "engine.events",
    "Profile": "engine.config",
    "QueueEvent": "engine.queue",
    "Request": "engine.queue",
    "SamplingSettings": "engine.config",
    "Started": "engine.queue",
    "Ticket": "engine.queue",
    "TokenEvent": "engine.events",
    "Transformer": "engine.model",
    "Turn": "engine.conversation",
    "TurnStarted": "engine.events",
    "UserError": "engine.errors",
    "assign_state": "engine.loaders.state",
    "data_dir": "engine.store",
    "decode_one_token": "engine.generate",
    "STEP_NOT_BUILT": "engine.metrics",
    "default_model_path": "engine.default_model",
    "encode_dialog": "engine.chat_format",
    "find_config_path": "engine.config",
    "generate": "engine.generate",
    "load_config": "engine.config",
    "load_model": "engine.loaders",
    "load_profile_model": "engine.loaders",
    "open_store": "engine.store",
    "peak_rss_bytes": "engine.metrics",
    "prefill": "engine.generate",
    "profile_to_dict": "engine.config",
    "reply_record": "engine.saving",
    "resolve_device": "engine.placement",
    "resolve_placement": "engine.placement",
    "resolve_profile": "engine.config",
    "rss_bytes": "engine.metrics",
    "sampling_changed_only": "engine.config",
    "streamer_of": "engine.offload",
    "title_of": "engine.saving",
}

__all__ = [
    "Attachment",
    "CodeBlock",
    "code_blocks",
    "Persona",
    "apply_persona",
    "read_import",
    "MARK",
    "REMOTE_UNSENT",
    "ServerError",
    "first_line",
    "TokenizeRequest",
    "Tokens",
    "prompt_budget",
    "RemoteBackend",
    "RemoteClient",
    "ProfileBackend",
    "STEP_NOT_BUILT",
    "BUSY_SHOWN",
    "PHASES",
    "EnergyReading",
    "ReplyTimings",
    "Stamp",
    "other_load",
    "DEFAULTS_NAME",
    "Backend",
    "ChatSession",
    "ClearRequest",
    "Config",
    "ConfigError",
    "ContextOverflowError",
    "Conversation",
    "SavedMessage",
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
    "api_key",
    "assign_state",
    "background_busy",
    "data_dir",
    "compile_decode_step",
    "compile_supported",
    "compile_wanted",
    "decode_one_token",
    "default_model_path",
    "dense_prefill_rows",
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


class _Engine(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # importing the submodule engine.generate binds it as an attribute of engine, which
        # would hide the public function generate(): a public name is only ever bound to the
        # object _EXPORTS names (`from engine.generate import ...` is unaffected)
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Engine


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return __all__
