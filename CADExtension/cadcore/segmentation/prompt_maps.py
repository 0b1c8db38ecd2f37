"""Prompt maps for guided networks: clicks (and the previous segment) drawn on the network's working grid.

A guided network (card section ``interactive``, DeepEdit-style) takes, beside the image, one channel of positive and
one of negative clicks, and optionally the current segment. The maps are drawn where the network looks: on the working
grid (after orientation, resampling and cropping), with distances in millimetres, so a 3 mm Gaussian means 3 mm on a
thick-slice scan too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from cadcore.preprocessing.working_space import WorkingImage, prepare_label
from cadcore.registry.card import Interactive


def working_index(working: WorkingImage, ras: Sequence[float]) -> np.ndarray:
    """Continuous (I, J, K) index of a RAS point in the working array (crop offset included)."""
    index = np.array(working.grid.TransformPhysicalPointToContinuousIndex((-float(ras[0]), -float(ras[1]),
                                                                            float(ras[2]))))
    if working.crop is not None:
        index -= np.array([s.start for s in working.crop])
    return index


def draw_clicks(shape: Sequence[int], centres: Sequence[Sequence[float]], spacing: Sequence[float],
                radius_mm: float, kind: str = "gaussian") -> np.ndarray:
    """One float32 map of ``shape``: a Gaussian (sigma ``radius_mm``) or a disk around each centre (voxel indices,
    distances in mm), their maximum. Training draws its simulated clicks with this too, so a network sees at
    inference exactly the maps it was trained on."""
    values = np.zeros(tuple(shape), np.float32)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    for centre in centres:
        squared = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing))
        drawn = (np.exp(-squared / (2 * radius_mm ** 2)) if kind == "gaussian"
                 else (squared <= radius_mm ** 2).astype(np.float32))
        np.maximum(values, drawn, out=values)
    return values


def click_map(working: WorkingImage, clicks: Sequence[Sequence[float]], spec: Interactive) -> np.ndarray:
    """One float32 map (I, J, K) of the clicks (RAS mm) on the working grid, as the card's ``kind`` draws them."""
    return draw_clicks(working.array.shape[-3:], [working_index(working, click) for click in clicks],
                       working.grid.GetSpacing(), spec.radius_mm, spec.kind)


def guided_input(working: WorkingImage, spec: Interactive, positive: Sequence[Sequence[float]],
                 negative: Sequence[Sequence[float]], previous: sitk.Image | None,
                 preprocessing: dict) -> np.ndarray:
    """The (C, I, J, K) input the card's channels name, in their order (``previous``: the segment on the region)."""
    channels = []
    for name in spec.channels:
        if name == "image":
            channels.append(working.array.astype(np.float32))
        elif name == "positive":
            channels.append(click_map(working, positive, spec))
        elif name == "negative":
            channels.append(click_map(working, negative, spec))
        else:
            channels.append(prepare_label(previous, working, preprocessing).astype(np.float32) if previous is not None
                            else np.zeros(working.array.shape, np.float32))
    return np.stack(channels)
