"""The header of a ``model.safetensors`` file, read and checked without reading (or allocating) a single tensor.

Why our own reader: a sha256 only says the file is the one the card pins, not that it is safe or sane. A pickle or
a zip (``torch.save``) renamed ``model.safetensors`` with a matching hash used to be installed, and a card could
describe a network far larger than its weights (a 20 000-channel layer is a 43 GB allocation) that was built before
anything noticed. The header says every tensor's name, dtype and shape, and where its bytes are; checking it first
costs a few kilobytes of reading, so the engine can refuse a bad file before it builds a network or reads weights.

Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__"?: {str: str}}``, then the data buffer, whose
tensors must tile it exactly (as the safetensors library itself requires).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from cadcore.errors import CadError

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _refuse(path: Path, problem: str) -> CadError:
    return CadError(f"not a safetensors file ({problem}); weights must be safetensors, never a pickle or zip", path)


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """``{tensor name: TensorInfo}`` from ``path``'s header, after checking the file is a complete safetensors file
    (header length sane for the file size, every entry typed, offsets tiling the data buffer exactly)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _refuse(path, f"{size} bytes, shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length < 2 or length > min(MAX_HEADER_BYTES, size - 8):
                raise _refuse(path, f"header length {length} does not fit a {size}-byte file")
            raw = handle.read(length)
    except OSError as exc:
        raise CadError(f"cannot read weights ({exc.strerror or exc})", path) from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(path, f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _refuse(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise _refuse(path, "__metadata__ is not a text-to-text mapping")
    return _tensors(header, size - 8 - length, path)


def _tensors(header: dict, buffer_size: int, path: Path) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _refuse(path, f"entry {name!r} is not {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise _refuse(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            raise _refuse(path, f"tensor {name!r} has shape {shape!r}, not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise _refuse(path, f"tensor {name!r} has data_offsets {offsets!r}")
        info = TensorInfo(dtype, tuple(shape))
        if offsets[1] - offsets[0] != info.numel * DTYPE_BYTES[dtype]:
            raise _refuse(path, f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {list(shape)} {dtype}")
        tensors[name] = info
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise _refuse(path, f"tensor {name!r} does not follow the previous one in the data buffer")
        end = stop
    if end != buffer_size:
        problem = "truncated" if end > buffer_size else "trailing bytes"
        raise _refuse(path, f"{problem}: the header describes {end} data bytes, the file holds {buffer_size}")
    return tensors
