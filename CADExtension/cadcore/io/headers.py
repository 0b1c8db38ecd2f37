"""Checks on what an image's header claims, made before a single voxel is read.

ITK allocates the whole buffer the header asks for and only then reads (a 4 KiB NIfTI claiming 1024³ float32 costs
4 GiB before anything can refuse it), and silently repairs some headers (a zero or NaN NIfTI ``pixdim`` becomes
1 mm, so volumes in mL are wrong). So: parse the header, check geometry, pixel type, the bytes the file holds against
the bytes the header needs (uncompressed NIfTI, MetaImage, NRRD) and the size against available memory; only then
read. Used by ``images`` (files) and ``dicom`` (series), which is why it sits below both.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError

ORTHONORMAL_TOLERANCE = 1e-3
MEMORY_FACTOR = 4  # the image, its float32 copy, the resampled copy and the output live at once, at 4 bytes a voxel
COMPLEX_PIXELS = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}
NIFTI_BINARY = 1  # DT_BINARY: 1 bit per voxel, which ITK cannot represent and no model can use


def bytes_per_component(pixel_id: int) -> int:
    """Bytes of one component of a SimpleITK pixel type (a complex number counts as one component)."""
    return sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id, 1)).itemsize


def check_geometry(size: tuple[int, ...], spacing: tuple[float, ...], origin: tuple[float, ...],
                   direction: tuple[float, ...], path: str | Path) -> None:
    """Refuse a grid no result could be placed on: non-finite or non-positive spacing, non-finite origin, a
    direction that is not a rotation (non-orthonormal: physical distances, hence mL, would be wrong)."""
    if any(s < 1 for s in size):
        raise CadError(f"header gives an empty size {tuple(size)}", path)
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise CadError(f"spacing must be finite and positive, header gives {tuple(spacing)}", path)
    if not all(math.isfinite(o) for o in origin):
        raise CadError(f"origin must be finite, header gives {tuple(origin)}", path)
    dim = len(size)
    matrix = np.asarray(direction, dtype=float)
    if matrix.size != dim * dim or not np.isfinite(matrix).all():
        raise CadError(f"direction must be a finite {dim}x{dim} matrix, header gives {tuple(direction)}", path)
    matrix = matrix.reshape(dim, dim)
    error = float(np.abs(matrix @ matrix.T - np.eye(dim)).max())
    if error > ORTHONORMAL_TOLERANCE:
        shown = tuple(round(d, 4) for d in direction)
        raise CadError(f"direction matrix is not orthonormal (off by {error:.3g}): {shown}", path)


def check_pixel_type(pixel_id: int, path: str | Path) -> None:
    """Complex voxels have no intensity a model was trained on."""
    if pixel_id in COMPLEX_PIXELS:
        raise CadError(f"complex-valued voxels ({sitk.GetPixelIDValueAsString(pixel_id)}) are not supported", path)


def available_memory() -> int | None:
    """Bytes that can be allocated without swapping: Linux's MemAvailable (counts reclaimable cache), else the free
    physical pages; None when neither is known."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(size: tuple[int, ...], components: int, pixel_id: int, path: str | Path) -> None:
    """Refuse an image whose working copies cannot fit in memory, from the header alone. ``CAD_MAX_VOXELS``
    replaces the memory-derived limit (tests, shared machines)."""
    voxels = math.prod(size) * max(components, 1)
    override = os.environ.get("CAD_MAX_VOXELS")
    shape = "x".join(str(s) for s in size)
    if override:
        if voxels > int(override):
            raise CadError(f"image too large: the header claims {shape} voxels, more than CAD_MAX_VOXELS={override}",
                           path)
        return
    memory = available_memory()
    needed = voxels * max(bytes_per_component(pixel_id), 4) * MEMORY_FACTOR
    if memory is not None and needed > memory:
        raise CadError(f"image too large: the header claims {shape} voxels ({needed / 2**30:.1f} GiB to process), "
                       f"{memory / 2**30:.1f} GiB of memory available (CAD_MAX_VOXELS overrides)", path)


# --- raw headers: what ITK does not tell --------------------------------------------------------------------------


@dataclass(frozen=True)
class NiftiHeader:
    version: int  # 1 or 2
    single_file: bool  # magic n+1 / n+2: voxels follow the header in the same file
    compressed: bool
    datatype: int
    pixdim: tuple[float, ...]  # spatial pixdim[1..min(ndim, 3)]
    vox_offset: int
    data_bytes: int


def nifti_header(path: Path) -> NiftiHeader | None:
    """Parse a NIfTI-1 or NIfTI-2 header (gzipped or not, by content as ITK does); None for anything else."""
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if compressed else open(path, "rb") as stream:
            header = stream.read(540)
    except (EOFError, OSError, zlib.error) as exc:
        raise CadError(f"cannot read image (file is truncated or corrupt: {exc})", path) from exc
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(f"{endian}i", header[:4])[0] == 348:
            dims = struct.unpack(f"{endian}8h", header[40:56])
            datatype, bitpix = struct.unpack(f"{endian}2h", header[70:74])
            pixdim = struct.unpack(f"{endian}8f", header[76:108])
            vox_offset = struct.unpack(f"{endian}f", header[108:112])[0]
            magic, version = header[344:348], 1
            break
        if len(header) >= 540 and struct.unpack(f"{endian}i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(f"{endian}2h", header[12:16])
            dims = struct.unpack(f"{endian}8q", header[16:80])
            pixdim = struct.unpack(f"{endian}8d", header[104:168])
            vox_offset = struct.unpack(f"{endian}q", header[168:176])[0]
            magic, version = header[4:8], 2
            break
    else:
        return None
    if not 1 <= dims[0] <= 7:
        return None
    data_bytes = math.prod(max(int(d), 0) for d in dims[1 : dims[0] + 1]) * max(int(bitpix), 0) // 8
    return NiftiHeader(version, magic[:3] in (b"n+1", b"n+2"), compressed, int(datatype),
                       tuple(pixdim[1 : min(dims[0], 3) + 1]), int(vox_offset) if math.isfinite(vox_offset) else -1,
                       data_bytes)


def check_nifti_header(header: NiftiHeader, path: Path) -> None:
    """What the NIfTI library repairs in silence: a voxel offset inside the header (its bytes would be read as
    voxels), zero or NaN pixdim (becomes 1 mm), and 1-bit voxels."""
    minimum = 352 if header.version == 1 else 544
    if header.single_file and header.vox_offset < minimum:
        raise CadError(f"NIfTI vox_offset is {header.vox_offset}, inside the header (at least {minimum} in a "
                       "single-file image): header bytes would be read as voxels", path)
    if not all(math.isfinite(p) and p != 0 for p in header.pixdim):
        raise CadError(f"spacing must be finite and positive, NIfTI pixdim gives {header.pixdim}", path)
    if header.datatype == NIFTI_BINARY:
        raise CadError("1-bit (DT_BINARY) NIfTI voxels are not supported", path)


def _key_values(lines: list[bytes], separator: bytes) -> dict[str, str]:
    pairs = {}
    for line in lines:
        key, found, value = line.partition(separator)
        if found:
            pairs[key.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return pairs


def data_location(path: Path) -> tuple[Path, int] | None:
    """(file, offset) where an uncompressed MetaImage or NRRD keeps its voxels; None when unknown or compressed
    (the reader itself must then find a short file). Offset -1: the voxels are the file's last bytes."""
    name = path.name.lower()
    try:
        with open(path, "rb") as stream:
            head = stream.read(1 << 16)
    except OSError:
        return None
    if name.endswith((".mha", ".mhd")):
        lines, length = [], 0
        for line in head.splitlines(keepends=True):
            lines.append(line)
            length += len(line)
            if line.strip().lower().startswith(b"elementdatafile"):
                break
        else:
            return None
        fields = _key_values(lines, b"=")
        if fields.get("compresseddata", "false").lower() == "true":
            return None
        source = fields.get("elementdatafile", "")
        header_size = int(fields.get("headersize", "0") or 0)
        if source.upper() == "LOCAL":
            return path, length if header_size == 0 else header_size
        if " " in source or "%" in source or source.upper().startswith("LIST"):
            return None
        return path.parent / source, header_size
    if name.endswith((".nrrd", ".nhdr")) and head.startswith(b"NRRD"):
        end = head.find(b"\n\n")
        if end < 0:
            return None
        fields = _key_values(head[:end].splitlines(), b":")
        if fields.get("encoding", "") != "raw" or "line skip" in fields:
            return None
        skip = int(fields.get("byte skip", "0") or 0)
        source = fields.get("data file", fields.get("datafile"))
        if source is None:
            return path, -1 if skip == -1 else end + 2 + skip
        if " " in source or "%" in source or source.upper().startswith("LIST"):
            return None
        return path.parent / source, skip
    return None


METAIMAGE_GEOMETRY = ("offset", "origin", "position", "elementspacing", "elementsize", "transformmatrix",
                      "orientation", "rotation")


def check_text_geometry(path: Path) -> None:
    """Refuse a MetaImage header whose geometry holds NaN or infinity: ITK's MetaIO reads "nan" as 0, so the volume
    would silently move to the origin. (ITK's NRRD reader refuses such values itself.)"""
    if not Path(path).name.lower().endswith((".mha", ".mhd")):
        return
    try:
        with open(path, "rb") as stream:
            head = stream.read(1 << 16)
    except OSError:
        return
    fields = _key_values(head.split(b"ElementDataFile")[0].splitlines(), b"=")
    for field in METAIMAGE_GEOMETRY:
        value = fields.get(field, "").lower()
        if any(word in value for word in ("nan", "inf")):
            raise CadError(f"header field '{field}' is not finite ({fields[field]}); the volume's position is unknown",
                           path)


def check_bytes_present(path: Path, needed: int) -> None:
    """Refuse an uncompressed single-file NIfTI, MetaImage or NRRD shorter than its header says; ITK would zero-fill
    or fail after allocating."""
    nifti = nifti_header(path) if Path(path).name.lower().endswith((".nii", ".nii.gz")) else None
    if nifti is not None:
        if nifti.compressed or not nifti.single_file:
            return  # gzip: checked by streaming in images._check_nifti_data; .hdr/.img pairs are not ours to read
        location: tuple[Path, int] | None = (path, nifti.vox_offset)
        needed = nifti.data_bytes  # the file's own type: ITK reports float for a scaled (scl_slope) integer file
    else:
        location = data_location(path)
    if location is None:
        return
    source, offset = location
    try:
        present = source.stat().st_size - max(offset, 0)
    except OSError as exc:
        raise CadError(f"cannot read image (its data file {source.name} is missing)", path) from exc
    if present < needed:
        raise CadError(f"cannot read image (file is truncated: {max(present, 0)} bytes of voxel data, the header "
                       f"needs {needed})", path)
