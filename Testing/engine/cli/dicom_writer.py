"""Write a real DICOM MR series, slice by slice with SimpleITK, for the batch and DICOM SEG tests.

Like ``Testing/engine/io/test_dicom_series.write_series`` (which lives in a test module of another folder), with the
voxels given: ``array`` is (slices, rows, columns); slice ``k`` lies at ``positions[k]`` mm along the direction's
third column from a fixed corner, so a direction whose third column is minus row x column gives slice positions
that *decrease* along the slice normal as the instance number grows.
"""

from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import SimpleITK as sitk

STUDY_UID, FRAME_UID = "1.2.826.0.1.3680043.9.7.20", "1.2.826.0.1.3680043.9.7.20.0"


def write_series(folder: Path, array: np.ndarray, uid: str = "1.2.826.0.1.3680043.9.7.20.1",
                 spacing: tuple[float, float, float] = (0.9, 0.9, 1.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                 frame_of_reference: str | None = FRAME_UID) -> list[Path]:
    """One series, files named by instance number; GDCM's writer changes LC_CTYPE, which is put back."""
    ctype = locale.setlocale(locale.LC_CTYPE)
    try:
        return _write(folder, np.asarray(array), uid, spacing, direction, frame_of_reference)
    finally:
        locale.setlocale(locale.LC_CTYPE, ctype)


def _write(folder, array, uid, spacing, direction, frame_of_reference) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    axes = np.asarray(direction, dtype=float).reshape(3, 3)  # columns: row, column and slice directions
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(array.shape[0]):
        image = sitk.GetImageFromArray(array[k : k + 1].astype(np.int16))[:, :, 0]
        origin = axes[:, 2] * spacing[2] * k + np.array([-20.0, 15.0, 40.0])
        image.SetSpacing(spacing[:2])
        image.SetOrigin(tuple(origin[:2]))
        tags = {"0008|0060": "MR", "0008|0008": "ORIGINAL\\PRIMARY", "0008|103e": "T1 test", "0020|000e": uid,
                "0020|000d": STUDY_UID, "0010|0020": "anon", "0010|0010": "Test^Patient", "0008|0021": "20260101",
                "0008|0031": "120000", "0020|0013": str(k + 1), "0008|0018": f"{uid}.{k + 1}",
                "0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0028|0030": f"{spacing[1]}\\{spacing[0]}",
                "0020|0037": "\\".join(f"{v:.6f}" for v in (*axes[:, 0], *axes[:, 1])),
                "0020|0032": "\\".join(f"{v:.4f}" for v in origin)}
        if frame_of_reference:
            tags["0020|0052"] = frame_of_reference
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        files.append(folder / f"IM{k + 1:04d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(image)
    return files


def blob_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A (slices, rows, columns) volume with a bright ellipsoid over noise: something a network responds to."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    blob = ((z / 0.6) ** 2 + (y / 0.5) ** 2 + (x / 0.4) ** 2) < 1
    return (rng.normal(200, 40, size=shape) + 600 * blob).clip(0, 4000)
