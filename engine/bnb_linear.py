"""bitsandbytes 8-bit and 4-bit (NF4) linear layers for the block projections.

bitsandbytes is an optional extra (``pip install 'llama-tui[bnb]'``); it is imported only when
a profile asks for ``quantization = "int8"`` or ``"nf4"``. Current releases run on CPU too.
Norms, the embedding and the output head stay in the model's dtype.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import torch
from torch import nn

from engine.errors import UserError

INSTALL_HINT = "pip install 'llama-tui[bnb]' (or pip install bitsandbytes)"


def require_bitsandbytes(mode: str) -> ModuleType:
    """The bitsandbytes module, or a one-line error saying how to get it."""
    # its warnings would go to stderr under the TUI: one at import about an optional kernels
    # download (no network here), one per int8 call about casting inputs to float16
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        return importlib.import_module("bitsandbytes")
    except ImportError:
        raise UserError(
            f'quantization = "{mode}" needs bitsandbytes, which is not installed: {INSTALL_HINT}'
        ) from None
    except Exception as exc:  # a broken native library raises RuntimeError and friends
        raise UserError(
            f'quantization = "{mode}": bitsandbytes failed to load ({exc}); '
            'reinstall it or use quantization = "none"'
        ) from None


def bnb_linear(
    weight: torch.Tensor, mode: str, device: torch.device, compute_dtype: torch.dtype
) -> nn.Module:
    """weight [out, in] -> a bitsandbytes layer on ``device``, quantized as it moves there."""
    bnb = require_bitsandbytes(mode)
    out_f, in_f = weight.shape
    # 16-bit source weights; Int8Params quantizes only when moving from the CPU to its device
    w = weight.detach().to(
        device="cpu" if mode == "int8" else weight.device,
        dtype=compute_dtype if compute_dtype != torch.float32 else torch.float16,
    )
    layer: nn.Module
    if mode == "int8":
        # LLM.int8(): int8 weights, outlier input features (|x| > 6) kept in 16-bit
        layer = bnb.nn.Linear8bitLt(
            in_f, out_f, bias=False, has_fp16_weights=False, threshold=6.0, device="meta"
        )
        layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    elif mode == "nf4":
        layer = bnb.nn.Linear4bit(
            in_f, out_f, bias=False, compute_dtype=compute_dtype, quant_type="nf4", device="meta"
        )
        layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4")
    else:
        raise ValueError(f"unknown quantization {mode!r}")
    return layer.to(device)  # bitsandbytes quantizes when the weight moves to its device
