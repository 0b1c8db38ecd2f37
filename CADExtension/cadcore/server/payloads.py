"""What travels in a request or an answer: capped JSON bodies, files as base64 of gzip, and the typed fields of a
request, each refused in one line (``ApiError``) before anything is computed.

Every size is capped (``--max-upload-mb``) before it is held: a body by its length and then by what arrives, a gzip
stream by what it inflates to (a zip bomb stops at the cap, never fills memory or disk), base64 by its length.
Nothing received is unpickled or executed: files are written under fixed names in the session's folder (an upload's
name gives only its suffix) and read by the same readers as the command line's.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import math
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from cadcore.io.images import suffix_of

FILE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")  # what an upload or a <file> may be (single-file formats only)
CHUNK = 1 << 20


class ApiError(Exception):
    """An answer other than 200: an HTTP status and the one line the client shows (the CLI's stderr line)."""

    def __init__(self, status: int, line: str) -> None:
        super().__init__(line)
        self.status, self.line = status, line


def bad_request(command: str, message: str) -> ApiError:
    return ApiError(400, f"cad {command}: error: {message}")


def too_large(what: str, cap: int) -> ApiError:
    return ApiError(413, f"cad serve: error: {what} is larger than --max-upload-mb ({cap // 2 ** 20} MB)")


def suffix_from_name(name: str | None, command: str) -> str:
    """The file suffix a client's name gives (only that is used from it); anything else is refused."""
    suffix = suffix_of(name or "")
    if not name or suffix not in (*FILE_SUFFIXES, ".seg.nrrd"):
        raise bad_request(command, f"{name or 'the upload'}: name the file with one of {', '.join(FILE_SUFFIXES)}")
    return suffix


class Inflater:
    """A gzip stream inflated chunk by chunk into ``sink``, refused (413) as soon as its output passes ``cap``."""

    def __init__(self, sink: BinaryIO, cap: int, what: str) -> None:
        self.sink, self.cap, self.what, self.size = sink, cap, what, 0
        self.stream = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> None:
        try:
            while data:
                out = self.stream.decompress(data, CHUNK)  # bounded output per call: a bomb never expands at once
                self.take(out)
                data = self.stream.unconsumed_tail
                if self.stream.eof and (data or self.stream.unused_data):
                    raise ApiError(400, f"cad serve: error: {self.what}: data after the end of the gzip stream")
        except zlib.error as exc:
            raise ApiError(400, f"cad serve: error: {self.what}: not a valid gzip stream ({exc})") from exc

    def take(self, out: bytes) -> None:
        self.size += len(out)
        if self.size > self.cap:
            raise too_large(f"{self.what} (inflated)", self.cap)
        self.sink.write(out)

    def finish(self) -> None:
        self.take(self.stream.flush())
        if not self.stream.eof:
            raise ApiError(400, f"cad serve: error: {self.what}: the gzip stream is truncated")


async def receive_body(chunks: AsyncIterator[bytes], length: str | None, cap: int, sink: BinaryIO, gzipped: bool,
                       what: str) -> int:
    """Stream a request body into ``sink`` (inflating it when ``gzipped``), refusing it past ``cap`` bytes: by its
    declared length before reading, then by what actually arrives. Returns the bytes written."""
    if length is not None and (not length.isdigit() or int(length) > cap):
        raise too_large(what, cap)
    inflater = Inflater(sink, cap, what) if gzipped else None
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > cap:
            raise too_large(what, cap)
        if inflater is not None:
            inflater.feed(chunk)
        else:
            sink.write(chunk)
    if inflater is not None:
        inflater.finish()
        return inflater.size
    return received


async def read_json(chunks: AsyncIterator[bytes], length: str | None, cap: int, command: str) -> dict[str, Any]:
    """A JSON object body of at most ``cap`` bytes."""
    import io

    buffer = io.BytesIO()
    await receive_body(chunks, length, cap, buffer, False, "request body")
    try:
        body = json.loads(buffer.getvalue() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(command, f"request: not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise bad_request(command, "request: the body must be a JSON object")
    return body


def decode_file(value: Any, field: str, folder: Path, stem: str, cap: int, command: str) -> Path | None:
    """A ``{"name": "x.nrrd", "data": base64(gzip(bytes))}`` written as ``folder/stem<suffix>``; None for null."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not isinstance(value.get("data"),
                                                                                             str):
        raise bad_request(command, f"request: '{field}' must be null or {{\"name\": ..., \"data\": base64 of gzip}}")
    suffix = suffix_from_name(value["name"], command)
    text = value["data"]
    if math.ceil(len(text) / 4) * 3 > cap:
        raise too_large(f"'{field}'", cap)
    try:
        packed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(command, f"request: '{field}': data is not base64 ({exc})") from exc
    path = folder / f"{stem}{suffix}"
    with open(path, "wb") as sink:
        inflater = Inflater(sink, cap, f"'{field}'")
        inflater.feed(packed)
        inflater.finish()
    return path


def encode_file(path: Path, name: str | None = None) -> dict[str, str]:
    """A file as the API sends it back: its name and base64 of its gzip (fast level: NRRD voxels are compressed)."""
    return {"name": name or path.name, "data": base64.b64encode(gzip.compress(path.read_bytes(), 1)).decode()}


def text(body: dict[str, Any], field: str, command: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise bad_request(command, f"request: '{field}' must be a non-empty string")
    return value


def integer(body: dict[str, Any], field: str, command: str) -> int:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(command, f"request: '{field}' must be an integer")
    return value


def flag(body: dict[str, Any], field: str, command: str, default: bool = False) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise bad_request(command, f"request: '{field}' must be true or false")
    return value


def numbers(value: Any, count: int) -> list[float] | None:
    """``value`` as ``count`` finite floats, or None when it is not that."""
    if not isinstance(value, list) or len(value) != count:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return [float(v) for v in value]


def points(body: dict[str, Any], field: str, command: str) -> tuple[tuple[float, float, float], ...]:
    value = body.get(field) or []
    found = [numbers(point, 3) for point in value] if isinstance(value, list) else [None]
    if any(point is None for point in found) or len(found) > 1000:
        raise bad_request(command, f"request: '{field}' must be a list of [R, A, S] points in mm")
    return tuple(tuple(point) for point in found)  # type: ignore[misc, arg-type]


def optional_numbers(body: dict[str, Any], field: str, count: int, command: str, shape: str) -> list[float] | None:
    value = body.get(field)
    if value is None:
        return None
    found = numbers(value, count)
    if found is None:
        raise bad_request(command, f"request: '{field}' must be null or {shape}")
    return found
