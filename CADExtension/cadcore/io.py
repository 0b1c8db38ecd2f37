"""Image I/O that keeps geometry exact.

Everything goes through SimpleITK, whose images carry size, spacing, origin and direction (LPS). Outputs are always
written with the geometry of the image they were computed for; writes go to a temporary name in the target folder and
are renamed into place, so a failure never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LABELMAP_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")


def suffix_of(path: str | Path) -> str:
    """The full image suffix (``.nii.gz`` and ``.seg.nrrd`` count as one)."""
    name = Path(path).name.lower()
    for suffix in (".seg.nrrd", ".nii.gz", *VOLUME_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


def list_dicom_series(folder: Path) -> dict[str, list[str]]:
    """Every DICOM series under ``folder`` (recursively), as series UID -> sorted file names."""
    series: dict[str, list[str]] = {}
    for root, _dirs, _files in os.walk(folder):
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(root) or ():
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(root, uid)
            if len(files) > len(series.get(uid, [])):
                series[uid] = list(files)
    return series


def read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read one series from a DICOM folder: ``series_uid`` if given, else the one with most slices."""
    series = list_dicom_series(folder)
    if not series:
        raise CadError("no DICOM series found in this folder", folder)
    if series_uid is not None:
        if series_uid not in series:
            raise CadError(f"DICOM series {series_uid} not found (have: {', '.join(sorted(series))})", folder)
        files = series[series_uid]
    else:
        files = max(series.values(), key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise CadError(f"cannot read DICOM series: {_first_line(exc)}", folder) from exc


def read_image(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read a volume file or DICOM folder, without checking it is fit for a model (see :func:`read_volume`)."""
    path = Path(path)
    if not path.exists():
        raise CadError("file not found", path)
    if path.is_dir():
        return read_dicom_series(path, series_uid)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise CadError(f"cannot read image ({_first_line(exc)})", path) from exc


def read_volume(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read a 3D scalar volume and refuse what no model can use: 2D, 4D/vector, NaN/Inf, constant (empty) images."""
    image = read_image(path, series_uid)
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


def check_output_path(path: str | Path, force: bool, allowed: tuple[str, ...] = LABELMAP_SUFFIXES) -> Path:
    """Validate an output path before any work starts: known suffix, writable folder, no overwrite unless forced."""
    path = Path(path)
    if suffix_of(path) not in allowed:
        raise CadError(f"unsupported output format (use one of {', '.join(allowed)})", path)
    if path.exists() and not force:
        raise CadError("output exists; pass --force to overwrite it", path)
    if not path.parent.exists():
        raise CadError("output folder does not exist", path.parent)
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it into place only if the block succeeds."""
    path = Path(path)
    suffix = suffix_of(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name[: -len(suffix)] or 'tmp'}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write any SimpleITK image atomically (format from the suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def _first_line(exc: BaseException) -> str:
    """SimpleITK errors are multi-line C++ traces; keep the informative last non-empty line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
