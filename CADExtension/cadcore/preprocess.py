"""Bring a volume into the model's working space, and results back onto the input's exact grid.

Working space = the model card's orientation (a lossless axis permutation/flip via ``DICOMOrient``) and spacing
(resampling only where the spacing differs), then intensity normalisation. Arrays are indexed (I, J, K) like MONAI,
so card values (spacing, patch size, mirror axes) are all in I, J, K order.

Going back never guesses geometry: when no resampling happened the orientation is undone exactly and the input's
geometry is copied; otherwise probabilities are resampled with the input image itself as the reference grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError

SPACING_TOLERANCE = 1e-3
# B-spline keeps edges that linear interpolation blurs; the networks are trained on unblurred voxels
IMAGE_INTERPOLATOR = sitk.sitkBSpline


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


def needs_resampling(image: sitk.Image, spacing: list[float] | None) -> bool:
    if not spacing:
        return False
    return not np.allclose(image.GetSpacing(), spacing, rtol=SPACING_TOLERANCE, atol=SPACING_TOLERANCE)


def resample_to_spacing(image: sitk.Image, spacing: list[float], interpolator: int) -> sitk.Image:
    """Resample keeping origin and direction; the new grid covers the same physical extent."""
    old_spacing = np.array(image.GetSpacing())
    new_spacing = np.array(spacing, dtype=float)
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old_spacing / new_spacing)).astype(int)
    return sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        interpolator,
        image.GetOrigin(),
        [float(s) for s in new_spacing],
        image.GetDirection(),
        0.0,
        image.GetPixelID(),
    )


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
    grid = resample_to_spacing(oriented, spacing, IMAGE_INTERPOLATOR) if resampled else oriented
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


def uncrop(values: np.ndarray, working: WorkingImage, fill: float) -> np.ndarray:
    """Paste a (C, I, J, K) working-crop array into the full working grid."""
    if working.crop is None:
        return values
    full = np.full((values.shape[0], *working.grid.GetSize()), fill, dtype=values.dtype)
    full[(slice(None), *working.crop)] = values
    return full


def probabilities_to_input_grid(probabilities: np.ndarray, working: WorkingImage) -> np.ndarray:
    """(C, I, J, K) working-space probabilities -> (C, I, J, K) on the input's grid (argmax-ready)."""
    full = uncrop(probabilities, working, fill=0.0)
    if working.crop is not None:
        full[0][np.all(full == 0, axis=0)] = 1.0  # outside the crop is background
    if not working.resampled:
        return np.stack([to_array(back_to_input(from_array(channel, working.grid), working)) for channel in full])
    channels = []
    for channel in full:
        image = from_array(channel.astype(np.float32), working.grid)
        back = sitk.Resample(image, working.original, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True)
        channels.append(to_array(back))
    return np.stack(channels)


def back_to_input(image: sitk.Image, working: WorkingImage) -> sitk.Image:
    """Undo the orientation of an unresampled working-grid image and take the input's exact geometry."""
    original = working.original
    restored = sitk.DICOMOrient(image, orientation_of(original))
    if restored.GetSize() != original.GetSize():
        raise CadError(f"internal geometry error: {restored.GetSize()} != {original.GetSize()}")
    restored.CopyInformation(original)
    return restored


def labels_on_input_grid(labels: np.ndarray, original: sitk.Image) -> sitk.Image:
    """(I, J, K) label array already on the input grid -> uint8 image with the input's exact geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0).astype(np.uint8)))
    image.CopyInformation(original)
    return image
