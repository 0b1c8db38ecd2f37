"""Regions of interest for classification, cut in physical space.

A classifier sees a fixed-size block of voxels. We build that block's grid in millimetres around the lesion: from a
mask (centroid of a label, optionally fitted to its extent), from a point in RAS coordinates with a box size in mm, or
the whole volume. The grid keeps the image's (canonicalised) axes, so nothing is rotated, and is resampled with
SimpleITK; where it reaches past the image the result is padded with the background value and says so. From a mask
without a label value, the lesion is the largest connected component of one label value (:func:`lesion_mask`), and
the result's ``roi`` says which label and how many voxels.

Card section ``roi``: ``{"size": [28, 28, 28], "spacing": [1, 1, 1] | null, "fit": "fixed" | "extent",
"margin": 0.1, "input": "image" | "mask" | "masked_image", "orientation": "RAS"}``. ``fit: extent`` (MedMNIST
style) picks an isotropic spacing so the lesion's extent plus margin fills the block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.io.images import check_same_grid
from cadcore.preprocessing.working_space import orient, to_array


@dataclass
class Roi:
    grid: sitk.Image  # the ROI grid (geometry only matters), float32 image samples
    image: np.ndarray  # (I, J, K) float32 intensities on the ROI grid; for ``input: mask`` models the lesion (0..1)
    mask: np.ndarray | None  # (I, J, K) bool lesion mask on the ROI grid, when a mask was given
    padded: bool
    info: dict[str, Any] = field(default_factory=dict)


def lps_to_ras(point) -> list[float]:
    return [-float(point[0]), -float(point[1]), float(point[2])]


ras_to_lps = lps_to_ras  # the same sign flip both ways


def _grid(image: sitk.Image, centre_lps, size: list[int], spacing: list[float], orientation: str | None) -> sitk.Image:
    """An empty grid of ``size`` voxels at ``spacing`` centred on ``centre_lps``, along the image's axes."""
    axes = orient(image, orientation) if orientation else image
    direction = np.array(axes.GetDirection()).reshape(3, 3)
    half = (np.array(size, dtype=float) - 1) / 2 * np.array(spacing)
    origin = np.array(centre_lps, dtype=float) - direction @ half
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def _inside(grid: sitk.Image, image: sitk.Image) -> bool:
    """True when every ROI voxel centre lies within the image's voxel centres (no padding needed)."""
    size = np.array(grid.GetSize()) - 1
    for corner in np.array(np.meshgrid(*[[0, s] for s in size], indexing="ij")).reshape(3, -1).T:
        index = image.TransformPhysicalPointToContinuousIndex(grid.TransformContinuousIndexToPhysicalPoint(
            [float(c) for c in corner]))
        if any(i < -0.5 or i > n - 0.5 for i, n in zip(index, image.GetSize())):
            return False
    return True


def _sample(image: sitk.Image, grid: sitk.Image, interpolator: int, default: float) -> np.ndarray:
    resampled = sitk.Resample(image, grid, sitk.Transform(), interpolator, default, sitk.sitkFloat32)
    return to_array(resampled)


def _check_centre_inside(image: sitk.Image, centre_lps, source: str) -> None:
    index = image.TransformPhysicalPointToContinuousIndex([float(c) for c in centre_lps])
    if any(i < -0.5 or i > n - 0.5 for i, n in zip(index, image.GetSize())):
        ras = ", ".join(f"{v:.1f}" for v in lps_to_ras(centre_lps))
        raise CadError(f"ROI centre ({ras}) RAS mm is outside the volume", source)


def extract_roi(image: sitk.Image, spec: dict[str, Any], mask: sitk.Image | None = None, label: int | None = None,
                centre_ras: list[float] | None = None, size_mm: list[float] | None = None,
                source: str = "input") -> Roi:
    """Cut the ROI the card asks for; exactly one of (mask+label), centre_ras, or neither (whole volume)."""
    size = [int(s) for s in spec.get("size", [32, 32, 32])]
    orientation = spec.get("orientation")
    background = float(sitk.GetArrayViewFromImage(image).min())
    mask_array = None
    info: dict[str, Any] = {}
    if mask is not None:
        check_same_grid(image, mask, source, what="mask")
        lesion, chosen = lesion_mask(mask, label, source)
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.Execute(lesion)
        centre_lps = stats.GetCentroid(1)
        extent_mm = _extent_mm(lesion, stats)
        info.update(source="mask", **chosen)
    elif centre_ras is not None:
        centre_lps = ras_to_lps(centre_ras)
        _check_centre_inside(image, centre_lps, source)
        default_mm = np.array(size) * np.array(spec.get("spacing") or [1.0] * 3)
        extent_mm = np.array(size_mm if size_mm is not None else default_mm, dtype=float)
        info.update(source="point", centre_ras=[float(c) for c in centre_ras], size_mm=extent_mm.tolist())
    else:
        centre_lps = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
        extent_mm = np.array(image.GetSize()) * np.array(image.GetSpacing())
        info.update(source="volume")
    spacing = _spacing(spec, size, extent_mm, add_margin=centre_ras is None)
    grid = _grid(image, centre_lps, size, spacing, orientation)
    if mask is not None:
        mask_array = _sample(lesion, grid, sitk.sitkNearestNeighbor, 0) > 0
    padded = not _inside(grid, image)
    info.update(centre_ras=lps_to_ras(centre_lps), spacing=[round(s, 5) for s in spacing], size=size, padded=padded)
    if mask is not None and spec.get("input") == "mask":
        # a model of lesion shape sees (and its baseline's features are computed on) the lesion, not the scan's
        # intensities: exactly what training sampled from its mask arrays (classification.datasets.through_roi)
        return Roi(grid, _sample(sitk.Cast(lesion, sitk.sitkFloat32), grid, sitk.sitkLinear, 0.0), mask_array, padded,
                   info)
    return Roi(grid, _sample(image, grid, sitk.sitkLinear, background), mask_array, padded, info)


def lesion_mask(mask: sitk.Image, label: int | None, source: str = "input") -> tuple[sitk.Image, dict[str, Any]]:
    """The lesion as a 0/1 UInt8 image on the mask's grid, and what was chosen (for the result's ``roi``).

    Given a label, the lesion is every voxel of that value. Without one it is the largest 26-connected component of
    a single label value: a multi-organ mask's highest value is an arbitrary structure, and a lesion mask's stray
    voxels are not the lesion. Touching structures of different values stay separate; ties go to the component met
    first in storage order. The ROI (centre, extent, mask) then covers that component only.
    """
    values = sitk.GetArrayViewFromImage(mask)
    if label is not None:
        if label == 0:
            raise CadError("--label 0 is the background, not a lesion", source)
        if not (values == label).any():
            present = sorted(int(v) for v in np.unique(values) if v != 0)
            raise CadError(f"label {label} is not in the mask (labels present: {present or 'none'})", source)
        lesion = sitk.Cast(sitk.BinaryThreshold(mask, label, label, 1, 0), sitk.sitkUInt8)
        return lesion, {"label": int(label), "label_chosen": "given (--label)",
                        "lesion_voxels": int(np.count_nonzero(values == label))}
    if not values.any():
        raise CadError("the mask holds no lesion (every voxel is 0); give a mask with a labelled lesion", source)
    # equal neighbouring values (distance 0) form one component; background is masked out
    components = sitk.ScalarConnectedComponent(mask, sitk.Cast(mask != 0, sitk.sitkUInt8), 0.0, True)
    sizes = sitk.RelabelComponentImageFilter()
    ranked = sizes.Execute(components)  # component 1 is the largest
    lesion = sitk.Cast(ranked == 1, sitk.sitkUInt8)
    n_voxels = int(sizes.GetSizeOfObjectsInPixels()[0])
    first = int(np.flatnonzero(sitk.GetArrayViewFromImage(lesion).ravel())[0])
    value = values.ravel()[first]
    if value != int(value):
        raise CadError(f"the largest lesion has the non-integer label value {float(value)}", source)
    return lesion, {"label": int(value), "label_chosen": f"largest connected component ({n_voxels} voxels)",
                    "lesion_voxels": n_voxels, "other_components": int(sizes.GetNumberOfObjects()) - 1}


def _extent_mm(lesion: sitk.Image, stats: sitk.LabelShapeStatisticsImageFilter) -> np.ndarray:
    box = stats.GetBoundingBox(1)  # (i, j, k, size_i, size_j, size_k)
    return np.array(box[3:], dtype=float) * np.array(lesion.GetSpacing())


def _spacing(spec: dict[str, Any], size: list[int], extent_mm: np.ndarray, add_margin: bool) -> list[float]:
    """The card's fixed spacing, or (``fit: extent``) an isotropic spacing fitting the extent into the block.

    A user's box size only matters for extent-fitted models; fixed-spacing models keep their own field of view
    (the result reports the ROI actually used).
    """
    if spec.get("fit", "fixed") == "extent" or not spec.get("spacing"):
        margin = 1.0 + float(spec.get("margin", 0.1)) if add_margin else 1.0
        isotropic = max(float(np.max(extent_mm * margin / np.array(size))), 1e-3)
        return [isotropic] * 3
    return [float(s) for s in spec["spacing"]]


def network_input(roi: Roi, spec: dict[str, Any], normalization: dict[str, Any]) -> np.ndarray:
    """The (1, I, J, K) array the classifier sees: the image, the binary mask, or the image inside the mask."""
    from cadcore.preprocessing.working_space import normalise

    kind = spec.get("input", "image")
    if kind == "mask":
        if roi.mask is None:
            raise CadError("this model classifies lesion masks: give --mask FILE --label N")
        return roi.mask.astype(np.float32)[None]
    image = normalise(roi.image, normalization)
    if kind == "masked_image":
        if roi.mask is None:
            raise CadError("this model needs a lesion mask: give --mask FILE --label N")
        image = np.where(roi.mask, image, 0.0).astype(np.float32)
    return image[None]
