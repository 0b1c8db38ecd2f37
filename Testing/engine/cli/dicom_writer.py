"""Write a real DICOM MR series, slice by slice with SimpleITK, for the batch and DICOM SEG tests.

The MR series these tests share, through ``Testing/dicom_series.write_slices``: ``array`` is (slices, rows, columns);
a direction whose third column is minus row x column gives slice positions that *decrease* along the slice normal
as the instance number grows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from dicom_series import write_slices

STUDY_UID, FRAME_UID = "1.2.826.0.1.3680043.9.7.20", "1.2.826.0.1.3680043.9.7.20.0"


def write_series(folder: Path, array: np.ndarray, uid: str = "1.2.826.0.1.3680043.9.7.20.1",
                 spacing: tuple[float, float, float] = (0.9, 0.9, 1.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                 frame_of_reference: str | None = FRAME_UID) -> list[Path]:
    """One series, files named by instance number, ``spacing[2]`` mm apart."""
    tags = {"0008|0060": "MR", "0008|0008": "ORIGINAL\\PRIMARY", "0008|103e": "T1 test", "0020|000d": STUDY_UID,
            "0010|0020": "anon", "0010|0010": "Test^Patient", "0008|0021": "20260101", "0008|0031": "120000",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4"}
    if frame_of_reference:
        tags["0020|0052"] = frame_of_reference
    return write_slices(folder, array, uid, [spacing[2] * k for k in range(len(array))], pixel_spacing=spacing[:2],
                        tags=tags, direction=direction, corner=(-20.0, 15.0, 40.0))


def blob_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A (slices, rows, columns) volume with a bright ellipsoid over noise: something a network responds to."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    blob = ((z / 0.6) ** 2 + (y / 0.5) ** 2 + (x / 0.4) ** 2) < 1
    return (rng.normal(200, 40, size=shape) + 600 * blob).clip(0, 4000)
