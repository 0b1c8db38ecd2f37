"""Small CT-like cases with two organ cubes, for the partly-labelled tests of training and evaluation.

An organ can be in the image without being drawn in the label: that is a partly labelled case (the organ was not
contoured), which ``labels_present`` declares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SIZE = (20, 20, 16)  # I, J, K
BOXES = {1: (slice(3, 9), slice(3, 9), slice(3, 8)), 2: (slice(11, 17), slice(10, 16), slice(8, 13))}


def write_organ_case(root: Path, name: str, seed: int, organs: tuple[int, ...], drawn: tuple[int, ...]) -> dict:
    """``root/images/<name>.nii.gz`` with ``organs`` bright (300 HU per label value) over noise, and
    ``root/labels/<name>.nii.gz`` with only ``drawn`` contoured; returns the dataset.json entry."""
    rng = np.random.default_rng(seed)
    ct = rng.normal(-100, 30, SIZE).astype(np.float32)
    label = np.zeros(SIZE, np.uint8)
    for value in organs:
        ct[BOXES[value]] += 300 * value
    for value in drawn:
        label[BOXES[value]] = value
    for kind, array in (("images", ct), ("labels", label)):
        (root / kind).mkdir(parents=True, exist_ok=True)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetSpacing((2.0, 2.0, 2.5))
        sitk.WriteImage(image, str(root / kind / f"{name}.nii.gz"))
    return {"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz"}
