"""Coarse-to-fine (cascaded FCN) inference: a low-resolution network finds the target, the fine one segments it.

The card's ``cascade`` section describes the coarse stage (``network``, ``preprocessing`` with a coarse spacing,
``inference``) and a ``margin_mm``; one safetensors file holds both networks under the ``coarse.`` and ``fine.``
prefixes, so one sha256 covers the package. When the coarse stage finds nothing, the fine network runs on the
whole volume and the sidecar says so. Coarse blobs smaller than ``min_component_fraction`` (card, default 0.1) of the
largest are dropped before the box is drawn: a low-resolution network's scattered false positives otherwise stretch
the box over half the head (measured on the tumour scans: 54-59 % of the volume with every blob, 3-4 % without the
small ones); a second lesion at least a tenth the size of the first is kept.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.preprocessing.working_space import prepare
from cadcore.registry.packages import ModelPackage
from cadcore.segmentation.sliding_window import predict_probabilities

Region = tuple[list[int], list[int]]  # (index, size) in the input's I, J, K voxels


def locate_roi(image: sitk.Image, package: ModelPackage, device, sw_batch_size: int) -> tuple[Region | None, dict]:
    """Run the coarse stage; return the input-voxel region to refine (or None) and what happened."""
    from cadcore.registry.networks import load_network

    cascade = package.card.cascade
    assert cascade is not None, "locate_roi needs a cascade package"
    coarse = cascade.coarse
    started = time.perf_counter()
    working = prepare(image, coarse.preprocessing)
    network = load_network(package, coarse, device)
    probabilities = predict_probabilities(network, working.array, list(coarse.inference.patch_size or ()), device,
                                          coarse.inference.overlap, sw_batch_size)
    foreground = main_components(probabilities.argmax(0) > 0, cascade.min_component_fraction)
    info: dict[str, Any] = {"used": True, "coarse_seconds": round(time.perf_counter() - started, 3)}
    if not foreground.any():
        info.update(used=False, fallback="coarse stage found no foreground; the fine network ran on the whole volume")
        return None, info
    offset = [s.start for s in working.crop] if working.crop else [0, 0, 0]
    hits = np.argwhere(foreground)
    low, high = hits.min(0) + offset, hits.max(0) + offset
    region = working_box_to_input(low, high, working.grid, image, cascade.margin_mm)
    info["roi_index"], info["roi_size"] = region
    info["roi_fraction"] = round(float(np.prod(region[1])) / float(np.prod(image.GetSize())), 4)
    return region, info


def main_components(foreground: np.ndarray, min_fraction: float) -> np.ndarray:
    """Keep the connected blobs (26-connectivity) with at least ``min_fraction`` of the largest blob's voxels."""
    from scipy import ndimage

    if min_fraction <= 0 or not foreground.any():
        return foreground
    labels, count = ndimage.label(foreground, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return foreground
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    return np.isin(labels, keep)


def working_box_to_input(low, high, grid: sitk.Image, image: sitk.Image, margin_mm: float) -> Region:
    """Map a working-grid voxel box to an input-grid voxel box through physical space, plus a margin."""
    corners = []
    for corner in itertools.product(*zip(np.asarray(low) - 0.5, np.asarray(high) + 0.5)):
        point = grid.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
        corners.append(image.TransformPhysicalPointToContinuousIndex(point))
    corners_array = np.array(corners)
    margin = margin_mm / np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    start = np.clip(np.floor(corners_array.min(0) - margin), 0, size - 1).astype(int)
    stop = np.clip(np.ceil(corners_array.max(0) + margin) + 1, start + 1, size).astype(int)
    return [int(v) for v in start], [int(v) for v in stop - start]
