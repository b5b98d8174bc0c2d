"""Device and dtype choices, validated with one-line errors."""

from __future__ import annotations

import torch

from engine.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """ "cpu" | "cuda" | "cuda:N" | "auto" -> a device that exists on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f'device {name!r}: no CUDA GPU is available to this torch build; use device = "cpu"'
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return dev
    raise UserError(f"device {name!r} is not one of cpu, cuda, cuda:N, auto")


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto": float16 on CUDA; on CPU bfloat16 where the CPU has native bf16 (about twice the
    decode speed of float32, which is memory-bound), else float32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if name not in DTYPES:
        raise UserError(f"dtype {name!r} is not one of {', '.join(DTYPES)}, auto")
    return DTYPES[name]
