"""DICOM series: find the series in a folder (recursively) and read one into a SimpleITK volume with its geometry."""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from cadcore.errors import CadError, native_message


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
        raise CadError(f"cannot read DICOM series: {native_message(exc)}", folder) from exc
