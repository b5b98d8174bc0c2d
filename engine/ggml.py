"""GGML tensor types: the few we read natively here, every other one from the ``gguf`` package.

Importing ``gguf`` costs ~50 ms of each start (it brings yaml and sentencepiece along), and the
default model needs none of it: its types (Q4_1, Q8_0, F32) are decoded by our own fast paths.
So the type codes and block sizes of those paths live here, and a file with another type (a
K-quant, an I-quant, ...) imports gguf for it. The values equal gguf's ``GGMLQuantizationType``
(both are IntEnums of ggml's codes), so either compares and hashes alike.
"""

from __future__ import annotations

from enum import IntEnum


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q8_0 = 8
    BF16 = 30


# type -> (elements per block, bytes per block), as ggml's type traits
BLOCK_SIZES: dict[int, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q8_0: (32, 34),
    GGMLType.BF16: (1, 2),
}


def ggml_type(code: int) -> IntEnum:
    """The type of a GGUF tensor's type code; ValueError for a code nobody knows."""
    if code in GGMLType._value2member_map_:
        return GGMLType(code)
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType(code)


def block_size(t: int) -> tuple[int, int]:
    """(elements, bytes) per block of type ``t``."""
    if t in BLOCK_SIZES:
        return BLOCK_SIZES[t]
    from gguf import GGML_QUANT_SIZES

    return GGML_QUANT_SIZES[t]  # type: ignore[index]
