"""A fast, validating reader of the GGUF container: metadata, tensor directory, mmap'd data.

gguf's own ``GGUFReader`` builds a numpy view per string (about 2 s for a 49k-token vocabulary);
this reader parses the header with ``struct`` in one pass and keeps the tensor data memory-mapped.
Type codes, block sizes and dequantization come from the ``gguf`` package.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelLoadError
from engine.ggml import block_size, ggml_type

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> struct format (scalars); 8 = string, 9 = array.
_SCALAR_FORMATS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_NUMPY_TYPES = {
    0: np.uint8,
    1: np.int8,
    2: np.uint16,
    3: np.int16,
    4: np.uint32,
    5: np.int32,
    6: np.float32,
    7: np.bool_,
    10: np.uint64,
    11: np.int64,
    12: np.float64,
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: rows first (GGUF stores ne[] innermost first)
    ggml_type: IntEnum  # engine.ggml.GGMLType, or gguf's GGMLQuantizationType for the rest
    offset: int  # absolute byte offset in the file
    n_bytes: int


class _Truncated(Exception):
    pass


_U64 = struct.Struct("<Q")


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise _Truncated
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        return self.strings(1)[0]

    def strings(self, count: int) -> list[str]:
        """``count`` strings in a row, in one tight loop (a vocabulary holds 50k-250k)."""
        buf, pos, size, unpack = self.buf, self.pos, len(self.buf), _U64.unpack_from
        out: list[str] = []
        append = out.append
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated
            (n,) = unpack(buf, pos)
            end = pos + 8 + n
            if end > size:
                raise _Truncated
            append(buf[pos + 8 : end].decode("utf-8", errors="replace"))
            pos = end
        self.pos = pos
        return out

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.take("<I"), self.take("<Q")
            if etype == _STRING:
                return self.strings(count)
            if etype in _NUMPY_TYPES:
                dtype = np.dtype(_NUMPY_TYPES[etype])
                end = self.pos + count * dtype.itemsize
                if end > len(self.buf):
                    raise _Truncated
                arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
                self.pos = end
                return arr.tolist()
            return [self.value(etype) for _ in range(count)]
        if vtype not in _SCALAR_FORMATS:
            raise ValueError(f"unknown metadata value type {vtype}")
        return self.take(_SCALAR_FORMATS[vtype])


class GGUFFile:
    """Metadata and tensor directory of one GGUF file; tensor bytes are read lazily via mmap."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path} (check --model or `model =`)")
        if path.is_dir():
            raise ModelLoadError(f"{path} is a folder, not a GGUF file: pass the .gguf file itself")
        with open(path, "rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                raise ModelLoadError(
                    f"{path} is not a GGUF file (no GGUF magic bytes): pass a .gguf model file"
                )
        with open(path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._data = np.frombuffer(self._map, dtype=np.uint8)
        try:
            self.version, self.metadata, self.tensors, self.data_offset = self._parse()
        except _Truncated:
            raise ModelLoadError(
                f"{path} is truncated (header ends early): the download or copy is incomplete"
            ) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{path} has a corrupt GGUF header ({exc})") from None
        for info in self.tensors.values():
            if info.offset + info.n_bytes > len(self._data):
                raise ModelLoadError(
                    f"{path} is truncated: tensor {info.name} runs past the end of the file "
                    f"({len(self._data)} bytes); the download or copy is incomplete"
                )

    def _parse(self) -> tuple[int, dict[str, Any], dict[str, TensorInfo], int]:
        cur = _Cursor(self._map)
        cur.take("<I")  # magic
        version = cur.take("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.take("<I"))
        raw_infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.take("<I")
            dims = [cur.take("<Q") for _ in range(n_dims)]
            raw_infos.append((name, dims, cur.take("<I"), cur.take("<Q")))
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        data_offset = -(-cur.pos // alignment) * alignment
        tensors: dict[str, TensorInfo] = {}
        for name, dims, type_code, rel_offset in raw_infos:
            try:
                gtype = ggml_type(type_code)
            except ValueError:
                raise ValueError(f"tensor {name} has unknown ggml type {type_code}") from None
            block, type_bytes = block_size(gtype)
            n_elements = int(np.prod(dims)) if dims else 1
            shape = tuple(int(d) for d in reversed(dims))
            tensors[name] = TensorInfo(
                name, shape, gtype, data_offset + rel_offset, n_elements // block * type_bytes
            )
        return version, metadata, tensors, data_offset

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a uint8 array of shape [rows, bytes_per_row] (zero-copy)."""
        info = self.tensors[name]
        flat = self._data[info.offset : info.offset + info.n_bytes]
        rows = int(np.prod(info.shape[:-1])) if len(info.shape) > 1 else 1
        return flat.reshape(rows, -1)

    def release(self, name: str) -> None:
        """Drop the tensor's file pages from this process's resident memory once its weights
        are placed, so RSS while loading tracks the placed weights, not placed + file. Pages
        still in use (a float32 tensor used in place) are read back from the file on access."""
        info = self.tensors[name]
        page = mmap.PAGESIZE
        start = -(-info.offset // page) * page
        end = (info.offset + info.n_bytes) // page * page
        if end > start and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
