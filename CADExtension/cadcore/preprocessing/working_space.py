"""Bring a volume into the model's working space (the way back onto the input's exact grid: :mod:`.input_grid`).

Working space = the model card's orientation (a lossless axis permutation/flip via ``DICOMOrient``) and spacing
(resampling only where the spacing differs), then intensity normalisation. Arrays are indexed (I, J, K) like MONAI,
so card values (spacing, patch size, mirror axes) are all in I, J, K order.

"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.preprocessing.resampling import needs_resampling, resample_to_spacing

IMAGE_INTERPOLATORS = {"bspline": sitk.sitkBSpline, "linear": sitk.sitkLinear}


def image_interpolator(preprocessing: dict[str, Any]) -> int:
    """The card's image interpolation for resampling into the working space (default B-spline)."""
    name = preprocessing.get("interpolation", "bspline")
    if name not in IMAGE_INTERPOLATORS:
        raise CadError(f"model card preprocessing.interpolation must be one of {sorted(IMAGE_INTERPOLATORS)}, "
                       f"got {name!r}")
    return IMAGE_INTERPOLATORS[name]


@dataclass
class WorkingImage:
    """A volume in the model's working space, plus what is needed to map results back."""

    array: np.ndarray  # float32, (I, J, K) after normalisation, cropped to ``crop`` if any
    grid: sitk.Image  # full working grid (oriented, resampled), for geometry
    original: sitk.Image  # the input as read
    resampled: bool
    crop: tuple[slice, slice, slice] | None = None


def to_array(image: sitk.Image) -> np.ndarray:
    """SimpleITK image -> numpy (I, J, K)."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def from_array(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """numpy (I, J, K) -> SimpleITK image on ``reference``'s grid."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.CopyInformation(reference)
    return image


def orient(image: sitk.Image, orientation: str | None) -> sitk.Image:
    if not orientation:
        return image
    return sitk.DICOMOrient(image, orientation)


def orientation_of(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def enhance(image: sitk.Image, options: dict[str, Any]) -> sitk.Image:
    """Optional contrast enhancement and denoising from the card (SimpleITK filters)."""
    if options.get("histogram_equalization"):
        he = options["histogram_equalization"]
        params = he if isinstance(he, dict) else {}
        image = sitk.AdaptiveHistogramEqualization(
            sitk.Cast(image, sitk.sitkFloat32), alpha=params.get("alpha", 0.3), beta=params.get("beta", 0.3)
        )
    denoise = options.get("denoise")
    if denoise:
        kind = denoise.get("kind", "curvature_flow")
        image = sitk.Cast(image, sitk.sitkFloat32)
        if kind == "curvature_flow":
            image = sitk.CurvatureFlow(image, timeStep=denoise.get("time_step", 0.0625),
                                       numberOfIterations=denoise.get("iterations", 5))
        elif kind == "median":
            image = sitk.Median(image, [int(denoise.get("radius", 1))] * 3)
        elif kind == "gaussian":
            image = sitk.SmoothingRecursiveGaussian(image, denoise.get("sigma", 0.5))
        else:
            raise CadError(f"unknown denoising kind {kind!r} in model card")
    return image


def normalise(array: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Intensity normalisation from the card.

    ``{"kind": "ct", "window": [lo, hi]}``: clip to the window, scale to [0, 1].
    ``{"kind": "mr", "percentiles": [lo, hi]}``: clip to the percentiles, then z-score (per case: MR has no units).
    ``{"kind": "none"}``: as is.
    """
    array = array.astype(np.float32, copy=False)
    kind = spec.get("kind", "none")
    if kind == "ct":
        lo, hi = spec.get("window", [-1000.0, 1000.0])
        return ((np.clip(array, lo, hi) - lo) / float(hi - lo)).astype(np.float32)
    if kind == "mr":
        p_lo, p_hi = spec.get("percentiles", [0.5, 99.5])
        lo, hi = np.percentile(array, [p_lo, p_hi])
        clipped = np.clip(array, lo, hi)
        std = float(clipped.std())
        return ((clipped - float(clipped.mean())) / (std if std > 0 else 1.0)).astype(np.float32)
    if kind == "none":
        return array
    raise CadError(f"unknown normalisation kind {kind!r} in model card")


def foreground_crop(array: np.ndarray, spec: dict[str, Any]) -> tuple[slice, slice, slice] | None:
    """Bounding box of voxels above ``threshold`` (raw intensities) plus a margin, or None for the whole volume."""
    mask = array > spec.get("threshold", 0.0)
    if not mask.any():
        return None
    margin = int(spec.get("margin_voxels", 8))
    bounds = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        bounds.append(slice(max(0, int(hits[0]) - margin), min(array.shape[axis], int(hits[-1]) + 1 + margin)))
    return tuple(bounds)  # type: ignore[return-value]


def prepare(image: sitk.Image, preprocessing: dict[str, Any]) -> WorkingImage:
    """Input volume -> :class:`WorkingImage` for the network."""
    oriented = orient(image, preprocessing.get("orientation"))
    spacing = preprocessing.get("spacing")
    resampled = needs_resampling(oriented, spacing)
    grid = resample_to_spacing(oriented, spacing, image_interpolator(preprocessing)) if resampled else oriented
    grid = enhance(grid, preprocessing)
    raw = to_array(grid)
    crop = foreground_crop(raw, preprocessing["crop_foreground"]) if preprocessing.get("crop_foreground") else None
    array = normalise(raw[crop] if crop else raw, preprocessing.get("normalization", {}))
    return WorkingImage(array=np.ascontiguousarray(array), grid=grid, original=image, resampled=resampled, crop=crop)


def prepare_label(label: sitk.Image, working: WorkingImage, preprocessing: dict[str, Any]) -> np.ndarray:
    """A label image into the same working space as its image (nearest neighbour), as uint8 (I, J, K)."""
    oriented = orient(label, preprocessing.get("orientation"))
    if working.resampled:
        oriented = sitk.Resample(oriented, working.grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    array = np.rint(to_array(oriented)).astype(np.uint8)
    return np.ascontiguousarray(array[working.crop] if working.crop else array)
