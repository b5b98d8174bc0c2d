"""Module types a cached model may hold, by name: how to describe one and rebuild it empty.

A loader may swap layers into the model it builds (an ``Int4Linear`` for a projection, a
bfloat16 ``nn.Linear`` head). The prepared-weights cache (engine/loaders/cache.py) stores the
tensors and, for each swapped layer, its kind and constructor arguments; reading, it rebuilds
that layer empty (tensors on the meta device, shapes right) and assigns the stored tensors.
A new layer type only has to register itself here, with ``@rebuildable("name")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

Args = dict[str, Any]  # JSON-able constructor arguments


@dataclass(frozen=True)
class Kind:
    name: str
    cls: type[nn.Module]
    args_of: Callable[[Any], Args]  # a module of `cls` -> its constructor arguments
    empty: Callable[..., nn.Module]  # **args -> a module with every tensor on meta


_KINDS: dict[str, Kind] = {}


def register(
    name: str, cls: type[nn.Module], args_of: Callable[[Any], Args], empty: Callable[..., nn.Module]
) -> None:
    if name in _KINDS and _KINDS[name].cls is not cls:
        raise ValueError(f"module kind {name!r} is already registered for {_KINDS[name].cls}")
    _KINDS[name] = Kind(name, cls, args_of, empty)


R = TypeVar("R", bound=type[nn.Module])


def rebuildable(name: str) -> Callable[[R], R]:
    """Class decorator: the class defines ``rebuild_args(self)`` and ``empty(cls, **args)``."""

    def decorate(cls: R) -> R:
        register(name, cls, lambda m: m.rebuild_args(), cls.empty)  # type: ignore[attr-defined]
        return cls

    return decorate


def spec_of(module: nn.Module, strict: bool = False) -> Args | None:
    """{"kind": name, "args": {...}} for a registered type (exact type), else None, or with
    ``strict`` a ValueError (a composite kind describing its parts uses that)."""
    for kind in _KINDS.values():
        if type(module) is kind.cls:
            return {"kind": kind.name, "args": kind.args_of(module)}
    if strict:
        raise ValueError(f"{type(module).__name__} is not in engine/rebuild.py")
    return None


def rebuild(spec: Args) -> nn.Module:
    """The empty module a spec describes; ValueError for an unknown kind or bad arguments."""
    kind = _KINDS.get(spec.get("kind", ""))
    args = spec.get("args")
    if kind is None or not isinstance(args, dict):
        raise ValueError(f"cannot rebuild module spec {spec!r}")
    try:
        return kind.empty(**args)
    except TypeError as exc:
        raise ValueError(f"cannot rebuild {kind.name} from {args!r}: {exc}") from None


def _linear_args(m: nn.Linear) -> Args:
    return {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "bias": m.bias is not None,
    }


def _empty_linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=bias, device="meta")


def _embedding_args(m: nn.Embedding) -> Args:
    return {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim}


def _empty_embedding(num_embeddings: int, embedding_dim: int) -> nn.Embedding:
    # from a meta table: nn.Embedding's own normal_ init on meta would import torch._dynamo
    table = torch.empty(num_embeddings, embedding_dim, device="meta")
    return nn.Embedding.from_pretrained(table, freeze=False)


register("linear", nn.Linear, _linear_args, _empty_linear)
register("embedding", nn.Embedding, _embedding_args, _empty_embedding)
