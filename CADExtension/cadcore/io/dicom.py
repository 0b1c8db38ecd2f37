"""DICOM series: find the series in a folder (recursively), choose one by content, check its slices, read it.

A study folder holds several series; taking the one with most files silently segmented a tumour *mask* series when
the counts tied. So the choice looks at each series' first header (modality, image type, description): a tie, or a
series that looks like a mask or derived image, is refused with the list of candidates and their descriptions, and
``--series`` decides. Before any voxel is read, every slice's header is read: a damaged file, a missing slice or
uneven spacing (ITK would read them onto one averaged spacing, shifting every label) is refused in one line. The chosen
series' UID and description travel on the image as metadata (``cad:series_uid``, ``cad:series_description``) so the
sidecar can record what was segmented.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.io.headers import check_memory, check_pixel_type
from cadcore.io.native import call_quietly, quiet_native

SERIES_UID_KEY = "cad:series_uid"
SERIES_DESCRIPTION_KEY = "cad:series_description"
SERIES_FILES_KEY = "cad:series_files"  # JSON list of the files, in the order of the image's slices
MODALITY_KEY = "cad:modality"  # the series' DICOM Modality: a CT stored without a Hounsfield rescale is still CT
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "PR", "SR", "KO", "REG"}
MASK_WORDS = ("mask", "seg", "label", "roi")
SPACING_TOLERANCE = 0.01  # relative: slice gaps must agree within 1 %


@dataclass(frozen=True)
class SeriesInfo:
    """What the first file of a series says about it."""

    uid: str
    files: tuple[str, ...]
    modality: str
    image_type: str
    description: str

    def looks_derived(self) -> bool:
        """A mask, segmentation or derived image: never chosen without ``--series``."""
        types = {part.strip().upper() for part in self.image_type.split("\\")}
        return (self.modality.upper() in NON_IMAGE_MODALITIES or bool(types & {"DERIVED", "SECONDARY"})
                or any(word in self.description.lower() for word in MASK_WORDS))

    def summary(self) -> str:
        kind = " ".join(part for part in (self.modality, self.image_type.replace("\\", "/")) if part)
        return f'{self.uid} "{self.description}" {len(self.files)} slices ({kind or "no modality"})'


def list_dicom_series(folder: Path) -> dict[str, list[str]]:
    """Every DICOM series under ``folder`` (recursively), as series UID -> file names sorted by GDCM."""
    series: dict[str, list[str]] = {}
    with quiet_native():
        for root, _dirs, _files in os.walk(folder):
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(root) or ():
                files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(root, uid)
                if len(files) > len(series.get(uid, [])):
                    series[uid] = list(files)
    return series


def _header(file: str) -> sitk.ImageFileReader:
    """One file's header (no voxels); a damaged file is refused naming it."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    call_quietly(reader.ReadImageInformation, file, "damaged DICOM file in the series")
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def describe_series(uid: str, files: list[str]) -> SeriesInfo:
    reader = _header(files[0])
    return SeriesInfo(uid, tuple(files), _tag(reader, "0008|0060"), _tag(reader, "0008|0008"),
                      _tag(reader, "0008|103e"))


def choose_series(series: dict[str, list[str]], folder: Path) -> SeriesInfo:
    """The series with most slices, unless that is a tie or a likely mask/derived series among several: then one
    line listing every candidate, asking for ``--series``. A folder with a single series is unambiguous."""
    infos = sorted((describe_series(uid, files) for uid, files in series.items()),
                   key=lambda info: len(info.files), reverse=True)
    if len(infos) == 1:
        return infos[0]
    best = infos[0]
    tied = [info for info in infos if len(info.files) == len(best.files)]
    if len(tied) > 1:
        reason = f"{len(tied)} series have {len(best.files)} slices"
    elif best.looks_derived():
        reason = f"the series with most slices looks like a mask or derived image ({best.description or best.uid})"
    else:
        return best
    candidates = "; ".join(info.summary() for info in infos)
    raise CadError(f"cannot choose the DICOM series: {reason}; choose one with --series UID (candidates: "
                   f"{candidates})", folder)


def _vector(text: str, count: int, file: str, name: str) -> np.ndarray:
    try:
        values = np.array([float(part) for part in text.split("\\")], dtype=float)
    except ValueError:
        values = np.array([])
    if values.size != count or not np.isfinite(values).all():
        raise CadError(f"DICOM {name} is missing or not {count} finite numbers: {text!r}", file)
    return values


def check_slices(files: tuple[str, ...], folder: Path) -> None:
    """Slices must lie on one evenly spaced, complete stack along the slice normal, every header readable."""
    readers = [_header(file) for file in files]
    first = readers[0]
    if first.HasMetaDataKey("0028|0100") and _tag(first, "0028|0100") == "1":
        raise CadError("1-bit DICOM voxels (BitsAllocated 1) are not supported", files[0])
    check_pixel_type(first.GetPixelID(), files[0])
    size = first.GetSize()
    depth = len(files) if len(files) > 1 else (size[2] if len(size) > 2 else 1)
    check_memory((size[0], size[1], depth), first.GetNumberOfComponents(), first.GetPixelID(), folder)
    if len(files) < 2:
        return  # one file (multi-frame or a single slice): its frames' geometry is ITK's to read
    orientation = _vector(_tag(first, "0020|0037"), 6, files[0], "ImageOrientationPatient (0020,0037)")
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    if not (abs(np.linalg.norm(row) - 1) < 1e-3 and abs(np.linalg.norm(column) - 1) < 1e-3
            and abs(row @ column) < 1e-3):
        raise CadError(f"DICOM ImageOrientationPatient is not orthonormal: {tuple(orientation)}", files[0])
    positions = []
    for file, reader in zip(files, readers):
        if not np.allclose(_vector(_tag(reader, "0020|0037"), 6, file, "ImageOrientationPatient (0020,0037)"),
                           orientation, atol=1e-3):
            raise CadError("slice orientation differs from the series' first slice", file)
        if reader.GetSize()[:2] != size[:2]:
            raise CadError(f"slice size {reader.GetSize()[:2]} differs from the series' {size[:2]}", file)
        positions.append((float(_vector(_tag(reader, "0020|0032"), 3, file, "ImagePositionPatient (0020,0032)")
                                @ normal), file))
    positions.sort()
    _check_spacing(positions, folder)


def _check_spacing(positions: list[tuple[float, str]], folder: Path) -> None:
    """Gaps along the normal must all equal the smallest one (within 1 %); a gap of k spacings names the missing
    positions, any other unevenness the two slices around it."""
    gaps = np.diff([position for position, _ in positions])
    for gap, (position, file), (_, previous) in zip(gaps, positions[1:], positions):
        if gap < 1e-4:
            raise CadError(f"two slices at the same position ({position:.3f} mm along the slice normal): "
                           f"{Path(previous).name} and {Path(file).name}", folder)
    spacing = float(np.median(gaps))
    tolerance = SPACING_TOLERANCE * spacing
    for index, gap in enumerate(gaps):
        if abs(gap - spacing) <= tolerance:
            continue
        before, after = positions[index], positions[index + 1]
        steps = gap / spacing
        if round(steps) >= 2 and abs(steps - round(steps)) * spacing <= tolerance:
            missing = ", ".join(f"{before[0] + spacing * k:.3f}" for k in range(1, round(steps)))
            raise CadError(f"DICOM series has a missing slice at {missing} mm along the slice normal (between "
                           f"{Path(before[1]).name} and {Path(after[1]).name}, spacing {spacing:.4g} mm)", folder)
        raise CadError(f"DICOM slices are unevenly spaced: {gap:.4g} mm between {Path(before[1]).name} and "
                       f"{Path(after[1]).name}, {spacing:.4g} mm elsewhere", folder)


def check_no_damaged_files(info: SeriesInfo, series: dict[str, list[str]]) -> None:
    """GDCM leaves out of every series a file it cannot parse, so a damaged slice would only show as a gap. A file
    beside the chosen series' slices that carries the DICOM preamble but does not read is named instead."""
    listed = {os.path.abspath(name) for names in series.values() for name in names}
    for folder in sorted({os.path.dirname(os.path.abspath(name)) for name in info.files}):
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.path in listed or not entry.is_file():
                continue
            try:
                with open(entry.path, "rb") as stream:
                    if stream.read(132)[128:] != b"DICM":
                        continue  # not DICOM at all: a stray file, ignored
            except OSError:
                continue
            reader = _header(entry.path)  # raises, naming the file, when even its header does not read
            if _tag(reader, "0020|000e") == info.uid:
                raise CadError("damaged DICOM file in the series (GDCM cannot parse it)", entry.path)


def select_series(folder: Path, series_uid: str | None = None) -> tuple[SeriesInfo, dict[str, list[str]]]:
    """The series to read from ``folder`` (``series_uid``, else the one :func:`choose_series` picks) and every series
    found there."""
    series = list_dicom_series(folder)
    if not series:
        raise CadError("no DICOM series found in this folder", folder)
    if series_uid is None:
        return choose_series(series, folder), series
    if series_uid not in series:
        raise CadError(f"DICOM series {series_uid} not found (have: {', '.join(sorted(series))})", folder)
    return describe_series(series_uid, series[series_uid]), series


def series_files_of(image: sitk.Image) -> list[str] | None:
    """The files of the DICOM series ``image`` was read from, slice k being file k (None: not read from a series)."""
    if not image.HasMetaDataKey(SERIES_FILES_KEY):
        return None
    return list(json.loads(image.GetMetaData(SERIES_FILES_KEY)))


def read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read one series from a DICOM folder: ``series_uid`` if given, else the one chosen by :func:`choose_series`.
    The image carries the series' UID and description as metadata."""
    info, series = select_series(folder, series_uid)
    check_no_damaged_files(info, series)
    check_slices(info.files, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(info.files))
    image = call_quietly(reader.Execute, folder, "cannot read DICOM series")
    image.SetMetaData(SERIES_UID_KEY, info.uid)
    image.SetMetaData(SERIES_DESCRIPTION_KEY, info.description)
    image.SetMetaData(MODALITY_KEY, info.modality)
    image.SetMetaData(SERIES_FILES_KEY, json.dumps(list(info.files)))
    return image


def series_source(image: sitk.Image) -> dict[str, str] | None:
    """The DICOM series an image was read from (for the sidecar), None for an image read from a file."""
    if not image.HasMetaDataKey(SERIES_UID_KEY):
        return None
    return {"dicom_series_uid": image.GetMetaData(SERIES_UID_KEY),
            "dicom_series_description": image.GetMetaData(SERIES_DESCRIPTION_KEY)}

