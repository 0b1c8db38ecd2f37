"""Reading images with their exact geometry, and refusing what no result could be trusted on.

Everything goes through SimpleITK, whose images carry size, spacing, origin and direction (LPS). A file's header is
read and checked first (``headers``: geometry, pixel type, bytes present, memory), its voxels only after, and every
native call runs under ``native.call_quietly`` so a refusal is one line. DICOM folders go to ``dicom``.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.io.dicom import read_dicom_series
from cadcore.io.headers import (
    bytes_per_component,
    check_bytes_present,
    check_geometry,
    check_memory,
    check_nifti_header,
    check_pixel_type,
    check_text_geometry,
    nifti_header,
)
from cadcore.io.native import call_quietly

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LABELMAP_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


def suffix_of(path: str | Path) -> str:
    """The full image suffix (``.nii.gz`` and ``.seg.nrrd`` count as one)."""
    name = Path(path).name.lower()
    for suffix in (".seg.nrrd", ".nii.gz", *VOLUME_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def read_image(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read a volume file or DICOM folder, without checking it is fit for a model (see :func:`read_volume`).

    The header is read and checked first (geometry, pixel type, bytes present, memory), so a lying header is refused
    before ITK allocates what it claims. NIfTI also gets a pass for truncation and NaN/Inf voxels, because ITK would
    silently turn them into zeros and no later check could tell."""
    return _read(Path(path), series_uid, volume=False)


def _read(path: Path, series_uid: str | None, volume: bool) -> sitk.Image:
    if not path.exists():
        raise CadError("file not found", path)
    if path.is_dir():
        image = read_dicom_series(path, series_uid)
        check_geometry(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), path)
        return image
    nifti = nifti_header(path) if suffix_of(path) in (".nii", ".nii.gz") else None
    if nifti is not None:
        check_nifti_header(nifti, path)
    check_text_geometry(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    call_quietly(reader.ReadImageInformation, path)
    check_header(reader, path, volume)
    check_bytes_present(path, math.prod(reader.GetSize()) * reader.GetNumberOfComponents()
                        * bytes_per_component(reader.GetPixelID()))
    if nifti is not None:
        _check_nifti_data(path)
    return call_quietly(reader.Execute, path)


def check_header(reader: sitk.ImageFileReader, path: Path, volume: bool) -> None:
    """Everything a header tells that can refuse the file before its voxels are read. ``volume``: also refuse what
    no model takes (vector voxels, not 3D), as :func:`check_volume` does after reading."""
    size, components = reader.GetSize(), reader.GetNumberOfComponents()
    check_pixel_type(reader.GetPixelID(), path)  # first: ITK counts a complex voxel as two components
    if volume and components != 1:
        raise CadError(f"expected a scalar volume, got {components} components per voxel", path)
    if volume and reader.GetDimension() != 3:
        raise CadError(f"expected a 3D volume, got a {reader.GetDimension()}D image of size {size}", path)
    check_geometry(size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), path)
    check_memory(size, components, reader.GetPixelID(), path)


NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI-1 datatype codes of float32 and float64


def _check_nifti_data(path: Path) -> None:
    """Refuse what ITK's NIfTI reader hides: SimpleITK 2.5 zero-fills a truncated file without an error (half a
    .nii.gz reads as a volume whose second half is 0) and replaces NaN/Inf voxels by 0 (``nifti_read_buffer``; fixed
    only in ITK 6, InsightSoftwareConsortium/ITK#6683). One streaming pass over the NIfTI-1 data, never a full copy."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"  # by content, as ITK does: a .nii may be gzipped and vice versa
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as stream:
            header = stream.read(348)
            endian = "<" if header[:4] == struct.pack("<i", 348) else ">"
            dims = struct.unpack(f"{endian}8h", header[40:56]) if len(header) == 348 else (0,)
            if header[:4] != struct.pack(f"{endian}i", 348) or not 1 <= dims[0] <= 7:
                return  # NIfTI-2 or Analyze: ITK parsed it; no rule of ours applies
            datatype, bitpix = struct.unpack(f"{endian}2h", header[70:74])
            vox_offset = int(struct.unpack(f"{endian}f", header[108:112])[0])
            expected = vox_offset + int(np.prod(dims[1 : dims[0] + 1], dtype=np.int64)) * bitpix // 8
            length = len(header) + len(stream.read(max(vox_offset - len(header), 0)))
            dtype = np.dtype(endian + NIFTI_FLOAT_TYPES[datatype]) if datatype in NIFTI_FLOAT_TYPES else None
            finite = True
            for chunk in iter(lambda: stream.read(1 << 24), b""):
                length += len(chunk)
                if dtype is not None and finite:
                    finite = bool(np.isfinite(np.frombuffer(chunk[: len(chunk) // dtype.itemsize * dtype.itemsize],
                                                            dtype)).all())
    except (EOFError, OSError, zlib.error) as exc:
        raise CadError(f"cannot read image (file is truncated or corrupt: {exc})", path) from exc
    if length < expected:
        raise CadError(f"cannot read image (file is truncated: {length} bytes, the header needs {expected})", path)
    if not finite:
        raise CadError("image contains NaN or infinite values", path)


def read_volume(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read a 3D scalar volume and refuse what no model can use: 2D, 4D/vector, NaN/Inf, constant (empty) images."""
    image = _read(Path(path), series_uid, volume=True)
    check_volume(image, path)
    return image


def check_volume(image: sitk.Image, path: str | Path) -> None:
    """Raise :class:`CadError` unless ``image`` is a finite, non-constant 3D scalar volume."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        components = image.GetNumberOfComponentsPerPixel()
        raise CadError(f"expected a scalar volume, got {components} components per voxel", path)
    if image.GetDimension() != 3:
        raise CadError(f"expected a 3D volume, got a {image.GetDimension()}D image of size {image.GetSize()}", path)
    size = image.GetSize()
    if min(size) < 2:
        raise CadError(f"expected a 3D volume, got a single-slice image of size {size}", path)
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise CadError("image contains NaN or infinite values", path)
    if array.min() == array.max():
        raise CadError(f"image is empty (every voxel is {array.min()})", path)


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tolerance``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
    )


def check_same_grid(image: sitk.Image, other: sitk.Image, other_path: str | Path, image_path: str | Path | None = None,
                    what: str = "label") -> None:
    """Refuse a label (or mask) whose grid is not its image's: its voxels would lie somewhere else. The message
    names the label's file (and the image's, when known)."""
    if not same_grid(image, other, tolerance=1e-3):
        image_name = f" {Path(image_path).name}" if image_path is not None else ""
        raise CadError(f"{what} grid differs from its image{image_name} (size/spacing/origin/direction)", other_path)
