"""A translated MONAI bundle on the engine's own path: the working array of its transforms, our sliding window, labels.

Each step reproduces the MONAI transform it replaces on the same float32 values (the formulas are MONAI's, in its
order of operations), so the network sees the array ``monai.bundle`` would give it:

* ``Orientationd`` → ``sitk.DICOMOrient`` (a lossless permutation/flip; the same letters mean the same directions);
* ``Spacingd`` (bilinear) → :func:`cadcore.preprocessing.resampling.resample_to_spacing`, which follows
  ``Spacingd``'s grid and border rules;
* ``ScaleIntensityRanged``, ``NormalizeIntensityd``, ``ScaleIntensityd``, ``CropForegroundd`` → :func:`apply_step`.

Then the engine's sliding window (channels-last, batch norm folded on CPU) and softmax, and the labels of ``Invertd``
(bilinear on the probabilities) + ``AsDiscreted(argmax)`` straight onto the input grid by
:func:`cadcore.preprocessing.input_grid.labels_to_input_grid`, with no float map per class at full resolution. Where
they can differ from ``monai.bundle``: voxels whose two best classes tie to float rounding, and input voxels beyond
the last working voxel centre (ITK's extrapolation against ``grid_sample``'s border), a few edge voxels at most.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.preprocessing.input_grid import labels_on_input_grid, labels_to_input_grid, uncrop
from cadcore.preprocessing.resampling import needs_resampling, resample_to_spacing
from cadcore.preprocessing.working_space import WorkingImage, orient, to_array
from cadcore.segmentation.bundle_translation import BundlePlan


def apply_step(array: np.ndarray, name: str, args: dict[str, Any]) -> tuple[np.ndarray, tuple[slice, ...] | None]:
    """One translated array step on a float32 (I, J, K) array → (new array, crop it made or None)."""
    import torch

    if name == "scale_range":  # ScaleIntensityRange: scale, shift, then clip the output
        out = (array - args["a_min"]) / (args["a_max"] - args["a_min"])
        out = out * (args["b_max"] - args["b_min"]) + args["b_min"]
        if args["clip"]:
            out = np.clip(out, args["b_min"], args["b_max"])
        return out.astype(np.float32, copy=False), None
    if name == "normalize":  # NormalizeIntensity: torch's mean and (biased) std, a zero std counts as one
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if args["nonzero"]:
            mask = tensor != 0
            if not bool(mask.any()):
                return array, None
            values = tensor[mask]
            mean, std = torch.mean(values).item(), torch.std(values, unbiased=False).item()
            out = tensor.clone()
            out[mask] = (values - mean) / (std if std != 0.0 else 1.0)
            return out.numpy(), None
        mean, std = torch.mean(tensor).item(), torch.std(tensor, unbiased=False).item()
        return ((tensor - mean) / (std if std != 0.0 else 1.0)).numpy(), None
    if name == "scale":  # ScaleIntensity's rescale_array (min/max as float32 values)
        low, high = np.float32(array.min()), np.float32(array.max())
        if low == high:
            return (array * np.float32(args["minv"])).astype(np.float32), None
        out = (array - low) / (high - low)
        return (out * (args["maxv"] - args["minv"]) + args["minv"]).astype(np.float32, copy=False), None
    if name == "crop_foreground":  # CropForeground: box of voxels > 0, margin clipped to the volume
        mask = array > 0
        if not mask.any():
            return array, None  # MONAI would crop to nothing; the whole volume is the only useful answer
        box = []
        for axis in range(3):
            hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
            margin = args["margin"][axis]
            box.append(slice(max(0, int(hits[0]) - margin), min(array.shape[axis], int(hits[-1]) + 1 + margin)))
        return np.ascontiguousarray(array[tuple(box)]), tuple(box)
    raise ValueError(f"unknown translated step {name}")


def working_image(image: sitk.Image, plan: BundlePlan) -> WorkingImage:
    """The bundle's preprocessing on ``image``: the working array and the geometry to come back by."""
    oriented = orient(image, plan.orientation)
    resampled = needs_resampling(oriented, plan.spacing)
    grid = resample_to_spacing(oriented, plan.spacing, sitk.sitkLinear) if resampled and plan.spacing else oriented
    array = to_array(grid).astype(np.float32, copy=False)
    crop: tuple[slice, ...] | None = None
    for name, args in plan.steps:
        array, made = apply_step(array, name, args)
        if made is not None:  # a crop of a crop: offsets add up
            crop = made if crop is None else tuple(
                slice(outer.start + inner.start, outer.start + inner.stop) for outer, inner in zip(crop, made))
    return WorkingImage(np.ascontiguousarray(array, dtype=np.float32), grid, image, resampled,
                        crop)  # type: ignore[arg-type]


def as_inverted(probabilities: np.ndarray, working: WorkingImage) -> tuple[np.ndarray, WorkingImage]:
    """Probabilities and geometry on which :func:`labels_to_input_grid` gives ``Invertd``'s labels exactly.

    ``Invertd`` pads an undone crop with zeros in every class (our uncrop makes it background) and samples beyond the
    last working voxel centre with ``grid_sample``'s border padding (ITK snaps all three axes to the nearest voxel
    there). So: uncrop with zeros, and on a resampled grid add one edge-replicated voxel on every side, after which
    every input voxel centre lies inside, where linear interpolation of replicated values is the border value.
    """
    probabilities = uncrop(probabilities, working)  # zeros in every class, as Invertd pads
    if not working.resampled:
        return probabilities, WorkingImage(working.array, working.grid, working.original, False, None)
    grid = sitk.ConstantPad(working.grid, [1, 1, 1], [1, 1, 1], 0.0)
    padded = np.pad(probabilities, ((0, 0), (1, 1), (1, 1), (1, 1)), mode="edge")
    return padded, WorkingImage(working.array, grid, working.original, True, None)


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """KeepLargestConnectedComponent (independent, full connectivity) on a label array, in place."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 3)
    for value in (int(v) for v in np.unique(labels) if v != 0):
        mask = labels == value
        components, count = ndimage.label(mask, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            labels[mask & (components != int(np.argmax(sizes)))] = 0
    return labels


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """MONAI's ``fill_holes`` on a label array, in place: per label (ascending), whatever the outside cannot reach
    through other voxels (full connectivity) takes the label, other labels' enclosed voxels included, as in MONAI."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 3)
    for value in (int(v) for v in np.unique(labels) if v != 0):
        reached = np.zeros(labels.shape, dtype=bool)
        ndimage.binary_dilation(reached, structure=structure, iterations=-1, mask=labels != value, origin=0,
                                border_value=1, output=reached)
        labels[~reached] = value
    return labels


def run_plan(image: sitk.Image, plan: BundlePlan, network: Any, device: Any, overlap: float | None = None,
             sw_batch_size: int | None = None,
             progress: Callable[[str, float], None] | None = None) -> tuple[sitk.Image, dict[str, float]]:
    """Segment ``image`` with a translated bundle; a uint8 labelmap on its exact grid and the stage timings."""
    from cadcore.segmentation.sliding_window import count_windows, fold_batch_norm, predict_probabilities

    timings: dict[str, float] = {}
    started = time.perf_counter()
    working = working_image(image, plan)
    timings["preprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress("preprocess", 1.0)

    started = time.perf_counter()
    overlap = plan.overlap if overlap is None else overlap
    batch = sw_batch_size or plan.sw_batch_size
    cpu = device.type == "cpu"
    if cpu:
        fold_batch_norm(network)
    n_windows = max(1, math.ceil(count_windows(working.array.shape, plan.roi_size, overlap) / batch))
    done = [0]

    def on_window(_: float) -> None:
        done[0] += 1
        if progress:
            progress("network", min(1.0, done[0] / n_windows))

    probabilities = predict_probabilities(network, working.array, plan.roi_size, device, overlap, batch, plan.mode,
                                          progress=on_window, channels_last=cpu)
    timings["network_s"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    labels = labels_to_input_grid(*as_inverted(probabilities, working))
    del probabilities
    for step in plan.postprocessing:
        labels = keep_largest_component(labels) if step == "largest_component" else fill_holes(labels)
    result = labels_on_input_grid(labels, image)
    timings["postprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress("postprocess", 1.0)
    return result, timings
