"""Reading back what was just written, before it is moved into place.

SimpleITK's NIfTI writer does not report a full disk: it prints ``** ERROR: NWAD: wrote only N of M bytes`` on file
descriptor 2 and returns normally, leaving a 0-byte or truncated file whose header still reads. So every output is
checked under its temporary name: not empty, its header reads back, and (for the single-file formats the engine
writes: NIfTI, NRRD, MetaImage) the data section holds every byte the header promises. The gzip trailer stores the
uncompressed length (modulo 2**32), which makes the check exact for compressed files without decompressing them.

Each check takes the temporary file and the final name; a failure is a :class:`CadError` naming the final name.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import struct
import zlib
from pathlib import Path

import SimpleITK as sitk

from cadcore.errors import CadError, native_message
from cadcore.io.native import quiet_native

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_HEADER_LIMIT = 1 << 20  # NRRD and MetaImage headers are text; a megabyte is far more than any real one


def disk_hint(folder: Path) -> str:
    """" (the disk is full)" when the folder's file system has (next to) no space left, else ""."""
    try:
        stats = os.statvfs(folder)
    except (AttributeError, OSError):  # Windows has no statvfs
        return ""
    free = stats.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else stats.f_bavail
    return " (the disk is full)" if free * stats.f_frsize < 64 * 1024 else ""


def check_nonempty(tmp: Path, final: Path) -> int:
    """The file's size; a 0-byte file is refused (a writer that failed silently)."""
    size = tmp.stat().st_size
    if size == 0:
        raise CadError(f"was written empty{disk_hint(tmp.parent) or ' (is the disk full?)'}", final)
    return size


def check_json_file(tmp: Path, final: Path) -> None:
    check_nonempty(tmp, final)
    try:
        json.loads(tmp.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CadError(f"does not read back as JSON after writing ({exc}){disk_hint(tmp.parent)}", final) from exc


def check_png_file(tmp: Path, final: Path) -> None:
    size = check_nonempty(tmp, final)
    with open(tmp, "rb") as handle:
        head = handle.read(len(PNG_SIGNATURE))
        handle.seek(max(0, size - len(PNG_END)))
        tail = handle.read()
    if head != PNG_SIGNATURE or tail != PNG_END:
        raise CadError(f"is not a complete PNG after writing{disk_hint(tmp.parent)}", final)


def check_image_file(tmp: Path, final: Path) -> None:
    """Not empty, header readable, and every data byte present (for NIfTI, NRRD and MetaImage)."""
    size = check_nonempty(tmp, final)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp))
    try:
        with quiet_native():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise CadError(f"does not read back after writing ({native_message(exc)}){disk_hint(tmp.parent)}",
                       final) from exc
    component = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(),
                           reader.GetNumberOfComponents()).GetSizeOfPixelComponent()
    expected = math.prod(reader.GetSize()) * reader.GetNumberOfComponents() * component
    name = final.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        problem = _nifti_problem(tmp, size, expected, gzipped=name.endswith(".gz"))
    elif name.endswith(".nrrd"):
        problem = _nrrd_problem(tmp, size, expected)
    elif name.endswith(".mha"):
        problem = _metaimage_problem(tmp, size, expected)
    else:  # detached headers and other formats: the header check above is what we can do
        problem = None
    if problem:
        raise CadError(f"was written incompletely: {problem}{disk_hint(tmp.parent) or ' (is the disk full?)'}", final)


def _gzip_length(tmp: Path, size: int) -> int | None:
    """The uncompressed length modulo 2**32 from a gzip trailer (None when the file is too short to have one)."""
    if size < 18:  # a 10-byte header and an 8-byte trailer at the least
        return None
    with open(tmp, "rb") as handle:
        handle.seek(size - 4)
        return struct.unpack("<I", handle.read(4))[0]


def _nifti_problem(tmp: Path, size: int, data_bytes: int, gzipped: bool) -> str | None:
    try:
        with (gzip.open(tmp, "rb") if gzipped else open(tmp, "rb")) as handle:
            header = handle.read(544)
    except (OSError, EOFError, zlib.error) as exc:
        return f"header: {exc}"
    for order in "<>":
        if len(header) >= 4 and struct.unpack(f"{order}i", header[:4])[0] in (348, 540):
            break
    else:
        return "no NIfTI header"
    nifti2 = struct.unpack(f"{order}i", header[:4])[0] == 540
    if nifti2:
        offset = struct.unpack(f"{order}q", header[168:176])[0] if len(header) >= 176 else None
    else:
        offset = int(struct.unpack(f"{order}f", header[108:112])[0]) if len(header) >= 112 else None
    if offset is None:
        return "short header"
    total = offset + data_bytes
    if gzipped:
        length = _gzip_length(tmp, size)
        return None if length == total % 2**32 else f"the compressed stream does not hold the {total} bytes expected"
    return None if size >= total else f"{size} of {total} bytes"


def _text_header(tmp: Path, size: int, end_of_header) -> tuple[list[str], int] | None:
    """The header lines and the header's length in bytes, cut where ``end_of_header(line)`` is true (inclusive)."""
    with open(tmp, "rb") as handle:
        head = handle.read(min(size, _HEADER_LIMIT))
    lines, position = [], 0
    while position < len(head):
        cut = head.find(b"\n", position)
        if cut < 0:
            return None
        line = head[position:cut].decode("latin-1").rstrip("\r")
        position = cut + 1
        lines.append(line)
        if end_of_header(line):
            return lines, position
    return None


def _nrrd_problem(tmp: Path, size: int, data_bytes: int) -> str | None:
    parsed = _text_header(tmp, size, lambda line: line == "")
    if parsed is None:
        return "no end of the NRRD header"
    lines, header_bytes = parsed
    fields = {}
    for line in lines[1:]:
        key, separator, value = line.partition(":")
        if separator and not line.startswith("#"):
            fields[key.strip().lower()] = value.lstrip("=").strip().lower()
    if "data file" in fields or "datafile" in fields or fields.get("line skip", "0") != "0" \
            or fields.get("byte skip", "0") != "0":
        return None  # detached or skipped data: not checked here
    encoding = fields.get("encoding")
    if encoding == "raw":
        return None if size - header_bytes >= data_bytes else f"{size - header_bytes} of {data_bytes} data bytes"
    if encoding in ("gzip", "gz"):
        length = _gzip_length(tmp, size)
        return None if length == data_bytes % 2**32 else f"the compressed data does not hold {data_bytes} bytes"
    return None


def _metaimage_problem(tmp: Path, size: int, data_bytes: int) -> str | None:
    parsed = _text_header(tmp, size, lambda line: line.replace(" ", "").lower().startswith("elementdatafile="))
    if parsed is None:
        return "no ElementDataFile line in the MetaImage header"
    lines, header_bytes = parsed
    fields = {key.strip().lower(): value.strip() for key, _, value in (line.partition("=") for line in lines)}
    if fields.get("elementdatafile", "").upper() != "LOCAL":
        return None
    if fields.get("compresseddata", "false").lower() == "true":
        try:
            data_bytes = int(fields["compresseddatasize"])
        except (KeyError, ValueError):
            return None  # ITK always writes the size; another writer's file is only header-checked
    stored = size - header_bytes
    return None if stored >= data_bytes else f"{stored} of {data_bytes} data bytes"
