"""Real DICOM series for the tests, written slice by slice with SimpleITK (the engine itself never writes DICOM).

One writer for every test folder (``engine/io``'s series choice, ``engine/cli``'s batch and DICOM SEG): each caller
gives the voxels, where the slices lie, and the tags its case is about.
"""

from __future__ import annotations

import locale
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_slices(folder: Path, array: np.ndarray, uid: str, positions: Sequence[float], *,
                 pixel_spacing: tuple[float, float], tags: Mapping[str, str], direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                 corner: tuple[float, float, float] = (-10.0, 5.0, 30.0),
                 file_name: Callable[[int], str] = lambda k: f"IM{k + 1:04d}.dcm") -> list[Path]:
    """``array`` (slices, rows, columns) as one series: slice ``k`` at ``positions[k]`` mm from ``corner`` along the
    direction's third column (so a third column of minus row x column makes positions decrease as the instance
    number grows); the series UID, instance numbers, SOP instance UIDs, pixel spacing, orientation and positions are
    set here, everything else comes from ``tags``. GDCM's writer switches the process's LC_CTYPE to "C" (later
    ``read_text()`` calls would then decode as ASCII), so the locale is put back afterwards."""
    ctype = locale.setlocale(locale.LC_CTYPE)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        axes = np.asarray(direction, dtype=float).reshape(3, 3)  # columns: row, column and slice directions
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        files = []
        for k, along in enumerate(positions):
            image = sitk.GetImageFromArray(np.asarray(array[k : k + 1]).astype(np.int16))[:, :, 0]
            origin = axes[:, 2] * along + np.asarray(corner)
            image.SetSpacing(pixel_spacing)
            image.SetOrigin(tuple(origin[:2]))
            for tag, value in {**tags, "0020|000e": uid, "0020|0013": str(k + 1), "0008|0018": f"{uid}.{k + 1}",
                               "0028|0030": f"{pixel_spacing[1]}\\{pixel_spacing[0]}",
                               "0020|0037": "\\".join(f"{v:.6f}" for v in (*axes[:, 0], *axes[:, 1])),
                               "0020|0032": "\\".join(f"{v:.4f}" for v in origin)}.items():
                image.SetMetaData(tag, value)
            files.append(folder / file_name(k))
            writer.SetFileName(str(files[-1]))
            writer.Execute(image)
        return files
    finally:
        locale.setlocale(locale.LC_CTYPE, ctype)
