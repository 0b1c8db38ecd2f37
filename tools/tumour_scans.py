"""The TCIA Brain-Tumor-Progression ``resampled256`` scans corrected as the engine's tumour models saw them.

Their headers are wrong (the SOURCES notes in ../shared/data): all-zero padding slices follow the brain, and the
spacing is not the scans' own. Training (``benchmarks/tumour_data.py``) and the OOD guard's training domain
(``tools/training_domain.py``) must correct them identically, so the one correction lives here: drop the padding
slices after the last one with content, give the nominal 0.86 x 0.86 x 6.5 mm spacing, the origin at 0 and the
identity direction.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

NOMINAL_SPACING = (0.86, 0.86, 6.5)  # I, J, K mm (why: benchmarks/tumour_data.py's docstring)


def slices_with_content(image: sitk.Image) -> int:
    """How many K slices to keep: up to the last one with a non-zero voxel (the rest is padding)."""
    values = sitk.GetArrayFromImage(image)  # (K, J, I)
    return int(np.flatnonzero(values.reshape(len(values), -1).any(1))[-1]) + 1


def corrected(image: sitk.Image, keep: int) -> sitk.Image:
    """``image`` (a scan or its mask) cut to its first ``keep`` slices, with the nominal geometry."""
    cropped = image[:, :, :keep]
    cropped.SetSpacing(NOMINAL_SPACING)
    cropped.SetOrigin((0.0, 0.0, 0.0))
    cropped.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return cropped
