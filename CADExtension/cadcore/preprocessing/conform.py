"""FreeSurfer-style "conform" (brainchop's input convention) and the way back to the input's exact grid.

brainchop's MeshNets were trained on volumes conformed as FreeSurfer does: a fixed cube (256³) of isotropic 1 mm
voxels in LIA orientation, centred on the centre of the scan, intensities linearly mapped to uint8 (minimum → 0, a
high percentile → 255, clipped), resampled trilinearly; then scaled to [0, 1] between the 2nd and 98th percentiles
of the conformed volume (clipped). The labels live in that cube and go back to the input's grid by nearest
neighbour, so the result covers the input voxel for voxel whatever its orientation, spacing or obliquity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError


def conformed_grid(image: sitk.Image, size: Sequence[int], spacing: float, orientation: str) -> sitk.Image:
    """An empty uint8 image on the conformed grid: ``size`` voxels of ``spacing`` mm, axes along ``orientation``,
    its centre voxel (``size // 2``, FreeSurfer's convention) on the physical centre of ``image``."""
    direction = np.array(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(orientation)).reshape(3, 3)
    centre_index = [(n - 1) / 2.0 for n in image.GetSize()]
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(centre_index))
    half = np.array([n // 2 for n in size], dtype=float)
    origin = centre - direction @ (half * spacing)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing([float(spacing)] * 3)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def conform(image: sitk.Image, size: Sequence[int], spacing: float, orientation: str,
            top_percentile: float) -> sitk.Image:
    """The image conformed to uint8 on :func:`conformed_grid` (outside the scan: 0)."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CadError("a MeshNet model segments one scalar volume; this image has "
                       f"{image.GetNumberOfComponentsPerPixel()} components per voxel", None)
    values = sitk.GetArrayViewFromImage(image)
    low = float(values.min())
    high = float(np.percentile(values, top_percentile))
    if not high > low:
        high = float(values.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    scaled = sitk.Cast(image, sitk.sitkFloat32)
    scaled = sitk.Clamp((scaled - low) * scale, sitk.sitkFloat32, 0.0, 255.0)
    grid = conformed_grid(image, size, spacing, orientation)
    resampled = sitk.Resample(scaled, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    array = np.rint(sitk.GetArrayViewFromImage(resampled)).astype(np.uint8)
    conformed = sitk.GetImageFromArray(array)
    conformed.CopyInformation(grid)
    return conformed


def percentile_scale(volume: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """float32 in [0, 1]: ``(v - p_low) / (p_high - p_low)`` clipped (all zeros when the two percentiles tie)."""
    low, high = np.percentile(volume, [float(percentiles[0]), float(percentiles[1])])
    if not high > low:
        return np.zeros(volume.shape, dtype=np.float32)
    scaled = (volume.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def labels_to_input(labels: np.ndarray, conformed: sitk.Image, original: sitk.Image) -> sitk.Image:
    """uint8 labels given as a (z, y, x) array on the conformed grid → the input's exact grid, nearest neighbour."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.astype(np.uint8)))
    image.CopyInformation(conformed)
    back = sitk.Resample(image, original, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    back.CopyInformation(original)
    return back
