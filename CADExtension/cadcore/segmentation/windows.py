"""The engine's sliding-window inference, in plain torch (no MONAI import on the inference path).

Why: ``cad segment`` on a model package needed MONAI only for ``monai.inferers.sliding_window_inference`` (and the
DynUNet class); importing MONAI costs ~0.7 s of start-up. This module gives the SAME output as MONAI's function as
the engine calls it (constant-0 padding, no buffering, one output tensor the size of the window), to float rounding:

- an axis shorter than the window is padded up to it (MONAI's split: ``diff // 2`` before, the rest after);
- window starts per axis: step ``int(roi * (1 - overlap))`` (at least 1; the whole axis when it equals the window),
  the last window shifted back to end at the border; windows run in C order (the last axis fastest);
- each window's output is weighted by an importance map (ones, or a Gaussian with sigma ``sigma_scale * roi`` clamped
  below at ``max(min, 1e-3)``), summed in window order, then divided by the summed weights.

Unlike MONAI it never pads (copies) the whole input: a window that reaches into the padding is zero-filled on its
own; and it accumulates straight into the unpadded output (the padding's outputs are cropped away anyway), so the
only full-volume buffers are the (N, C, spatial) float32 output and one (spatial) weight map.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch


def axis_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis, in the padded axis's coordinates (MONAI's ``_get_scan_interval`` and
    ``dense_patch_slices``): an axis no longer than the window has the single start 0."""
    padded = max(size, roi)
    if roi == padded:
        return [0]
    step = max(1, int(roi * (1 - overlap)))  # the same float expression as MONAI's, so the same rounding
    count = -(-(padded - roi) // step) + 1  # the first k with k * step + roi >= padded, plus one (step <= roi)
    return [min(k * step, padded - roi) for k in range(count)]


def window_positions(shape: Sequence[int], roi: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """Every window's start (padded coordinates), in the order they are run: C order, the last axis fastest."""
    return list(itertools.product(*(axis_starts(int(s), int(r), overlap) for s, r in zip(shape, roi))))


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """How many windows one image of spatial ``shape`` takes (the same positions :func:`sliding_window` runs)."""
    return math.prod(len(axis_starts(int(s), int(r), overlap)) for s, r in zip(shape, roi))


def importance_map(roi: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """The weight of each voxel of a window's output (float32, shape ``roi``). The Gaussian down-weights the window's
    borders, where the network sees the least context; the clamp keeps every weight positive (MONAI's
    ``compute_importance_map``, same operations in the same order, so the same floats)."""
    if mode == "constant":
        return torch.ones(tuple(roi), dtype=torch.float32, device=device)
    if mode != "gaussian":
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    weights = torch.ones((), dtype=torch.float32, device=device)
    for axis, size in enumerate(roi):
        sigma = size * sigma_scale
        x = torch.arange(start=-(size - 1) / 2.0, end=(size - 1) / 2.0 + 1, dtype=torch.float, device=device)
        x = torch.exp(x**2 / (-2 * sigma**2))
        weights = weights.unsqueeze(-1) * x[(None,) * axis] if axis > 0 else x
    return weights.clamp_(min=max(float(weights.min()), 1e-3))


def _regions(start: Sequence[int], roi: Sequence[int], pad: Sequence[int], shape: Sequence[int]):
    """For a window at padded ``start``: its slices in the unpadded image and the matching slices in the window."""
    image, window = [], []
    for s, r, p, n in zip(start, roi, pad, shape):
        low, high = max(s - p, 0), min(s - p + r, n)
        image.append(slice(low, high))
        window.append(slice(low - (s - p), high - (s - p)))
    return tuple(image), tuple(window)


@torch.inference_mode()
def sliding_window(
    inputs: torch.Tensor,
    roi_size: Sequence[int],
    sw_batch_size: int,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    overlap: float = 0.25,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Blend ``predictor``'s outputs over overlapping windows of ``inputs`` (N, C_in, *spatial) into a float32
    (N, C_out, *spatial) tensor on ``device`` (default: the input's). Windows are cut on the input's device, run on
    ``sw_device`` in batches of ``sw_batch_size`` (a batch may span two images, as in MONAI), and ``predictor`` must
    return (n, C_out, *roi_size)."""
    roi = tuple(int(r) for r in roi_size)
    if inputs.ndim != len(roi) + 2:
        raise ValueError(f"inputs must be (N, C, {len(roi)} spatial axes) for a {len(roi)}D window, "
                         f"got shape {tuple(inputs.shape)}")
    if any(r < 1 for r in roi):
        raise ValueError(f"roi_size must be positive, got {roi}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be at least 1, got {sw_batch_size}")
    device = torch.device(device) if device is not None else inputs.device
    sw_device = torch.device(sw_device) if sw_device is not None else inputs.device
    batch, channels, *shape = inputs.shape
    pad = [max(r - n, 0) // 2 for r, n in zip(roi, shape)]  # before; the rest of the difference goes after
    positions = window_positions(shape, roi, overlap)
    regions = [_regions(start, roi, pad, shape) for start in positions]
    whole = all(n >= r for n, r in zip(shape, roi))  # no window reaches into padding
    weights = importance_map(roi, mode, sigma_scale, sw_device)[None, None]
    weights_out = weights.to(device)
    output: torch.Tensor | None = None
    weight_sum = torch.zeros((1, 1, *shape), dtype=torch.float32, device=device)
    total = len(positions) * batch
    for first in range(0, total, sw_batch_size):
        indices = range(first, min(first + sw_batch_size, total))
        if whole and len(indices) == 1:  # a view, as MONAI passes it
            index = indices[0]
            window = inputs[(slice(index // len(positions), index // len(positions) + 1), slice(None),
                             *regions[index % len(positions)][0])]
        else:
            window = inputs.new_zeros((len(indices), channels, *roi))
            for row, index in enumerate(indices):
                image_part, window_part = regions[index % len(positions)]
                window[(row, slice(None), *window_part)] = inputs[(index // len(positions), slice(None), *image_part)]
        prediction = predictor(window.to(sw_device))
        if not isinstance(prediction, torch.Tensor) or tuple(prediction.shape[2:]) != roi \
                or prediction.shape[0] != len(indices):
            got = tuple(prediction.shape) if isinstance(prediction, torch.Tensor) else type(prediction).__name__
            raise ValueError(f"predictor must return ({len(indices)}, C, {', '.join(map(str, roi))}), got {got}")
        weighted = (prediction * weights).to(device=device, dtype=torch.float32)
        if output is None:
            output = torch.zeros((batch, weighted.shape[1], *shape), dtype=torch.float32, device=device)
        for row, index in enumerate(indices):
            image_part, window_part = regions[index % len(positions)]
            output[(index // len(positions), slice(None), *image_part)] += weighted[(row, slice(None), *window_part)]
            if index < len(positions):  # the weights of each position, once
                weight_sum[(0, slice(None), *image_part)] += weights_out[(0, slice(None), *window_part)]
    assert output is not None
    return output.div_(weight_sum)
