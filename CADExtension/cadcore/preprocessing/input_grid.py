"""Results back onto the input's exact grid: undo the working space's crop, orientation and resampling.

Split from :mod:`.working_space` (which brings a volume *into* working space). Going back never guesses
geometry: when no resampling happened the orientation is undone exactly and the input's geometry is copied;
otherwise values are resampled with the input image itself as the reference grid, and labels take a separable
trilinear path that avoids one full-resolution float map per class.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.preprocessing.working_space import WorkingImage, from_array, orientation_of, to_array


def paste(values: np.ndarray, window: tuple[slice, ...], size: tuple[int, ...],
          background_channel: bool = False) -> np.ndarray:
    """``values`` (leading channel axes, then three spatial axes) placed at ``window`` in zeros of spatial ``size``.
    Outside the window nothing was predicted: 0 everywhere, or, for class probabilities (``background_channel``),
    certainty of class 0 (background)."""
    whole = np.zeros((*values.shape[:-3], *size), dtype=values.dtype)
    if background_channel:
        whole[0] = 1.0
    whole[(..., *window)] = values
    return whole


def uncrop(values: np.ndarray, working: WorkingImage, background_channel: bool = False) -> np.ndarray:
    """A (C, I, J, K) working-crop array in the full working grid (:func:`paste`; unchanged without a crop)."""
    if working.crop is None:
        return values
    return paste(values, working.crop, working.grid.GetSize(), background_channel)


def probabilities_to_input_grid(probabilities: np.ndarray, working: WorkingImage,
                                background_outside_crop: bool = True) -> np.ndarray:
    """(C, I, J, K) working-space maps -> (C, I, J, K) on the input's grid (argmax-ready). Outside a foreground
    crop the maps are 0, and channel 0 is 1 there (background) unless ``background_outside_crop`` is False (a map
    that is not a class probability, e.g. the uncertainty)."""
    full = uncrop(probabilities, working, background_channel=background_outside_crop)
    if not working.resampled:
        return np.stack([to_array(back_to_input(from_array(channel, working.grid), working)) for channel in full])
    channels = []
    for channel in full:
        image = from_array(channel.astype(np.float32), working.grid)
        back = sitk.Resample(image, working.original, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True)
        channels.append(to_array(back))
    return np.stack(channels)


def labels_to_input_grid(probabilities: np.ndarray, working: WorkingImage, chunk_bytes: int = 64 << 20) -> np.ndarray:
    """(C, I, J, K) working-space probabilities -> uint8 labels (I, J, K) on the input grid.

    The labels of ``probabilities_to_input_grid(...).argmax(0)`` without its C full-resolution float maps, which cost
    more time and memory than the network on a CT (anchors.md §3). Unresampled: argmax, then the exact axis
    permutation. Resampled: the working grid is the input grid permuted, flipped and rescaled per axis, so
    SimpleITK's trilinear interpolation (nearest-neighbour extrapolation outside) is separable; it runs one chunk
    of input slices at a time, on p1 - p0 alone for two classes (p1' > p0' exactly when (p1 - p0)' > 0).
    Labels can differ from the float maps' argmax only where classes tie to float32 rounding.
    """
    full = uncrop(probabilities, working, background_channel=True)
    if not working.resampled:
        return to_array(back_to_input(from_array(argmax_labels(full), working.grid), working))
    axes = separable_axes(working.grid, working.original)
    if axes is None:  # not axis-aligned (never from prepare, kept for safety): the float maps, then argmax
        return probabilities_to_input_grid(probabilities, working).argmax(0).astype(np.uint8)
    import torch

    values = torch.from_numpy(np.ascontiguousarray(full[1:2] - full[0:1] if len(full) == 2 else full))
    # working axes in the input's (K, J, I) memory order, so each output chunk is a block of contiguous K slices
    values = values.permute(0, 1 + axes[2][0], 1 + axes[1][0], 1 + axes[0][0])
    coords = [np.clip(axes[a][1], 0, values.shape[3 - a] - 1) for a in range(3)]  # per input axis i, j, k
    taps = []
    for a, coord in enumerate(coords):
        low = np.floor(coord).astype(np.int64)
        high = np.minimum(low + 1, values.shape[3 - a] - 1)
        taps.append((torch.from_numpy(low), torch.from_numpy(high), torch.from_numpy((coord - low).astype(np.float32))))
    size = working.original.GetSize()
    out = np.empty(size[::-1], np.uint8)
    step = max(1, chunk_bytes // (values.shape[0] * size[0] * size[1] * 4 * 3))
    for k0 in range(0, size[2], step):
        low_k, high_k, w_k = (t[k0:k0 + step] for t in taps[2])
        first, last = int(low_k.min()), int(high_k.max())
        block = values[:, first:last + 1]
        for axis, (low, high, w) in ((3, taps[0]), (2, taps[1])):
            shape = [1] * 4
            shape[axis] = -1
            block = torch.lerp(block.index_select(axis, low), block.index_select(axis, high), w.view(shape))
        block = torch.lerp(block.index_select(1, low_k - first), block.index_select(1, high_k - first),
                           w_k.view(1, -1, 1, 1))
        out[k0:k0 + step] = (block[0] > 0).numpy() if len(full) == 2 else first_argmax(block)
    outside = [(axes[a][1] < -0.5) | (axes[a][1] >= values.shape[3 - a] - 0.5) for a in range(3)]
    if any(o.any() for o in outside):  # SimpleITK's nearest-neighbour extrapolation there
        nearest = [np.clip(np.floor(axes[a][1] + 0.5), 0, values.shape[3 - a] - 1).astype(np.int64) for a in range(3)]
        working_labels = argmax_labels(full).transpose(axes[2][0], axes[1][0], axes[0][0])
        for a in range(3):
            if outside[a].any():
                index = [nearest[2], nearest[1], nearest[0]]
                index[2 - a] = nearest[a][outside[a]]
                region = [slice(None)] * 3
                region[2 - a] = np.flatnonzero(outside[a])
                out[tuple(region)] = working_labels[np.ix_(*index)]
    return out.transpose(2, 1, 0)


def first_argmax(values):
    """uint8 argmax over the first axis of a torch tensor, first maximum on ties (``torch.argmax`` is slow there)."""
    import torch

    best = values[0].clone()
    labels = torch.zeros(values.shape[1:], dtype=torch.uint8)
    for index in range(1, len(values)):
        better = values[index] > best
        labels.masked_fill_(better, index)
        torch.maximum(best, values[index], out=best)
    return labels.numpy()


def argmax_labels(values: np.ndarray) -> np.ndarray:
    """(C, I, J, K) -> uint8 argmax over classes (first maximum on ties, like ``np.argmax``)."""
    if len(values) == 2:
        return (values[1] > values[0]).astype(np.uint8)
    return values.argmax(0).astype(np.uint8)


def separable_axes(working_grid: sitk.Image, original: sitk.Image) -> list[tuple[int, np.ndarray]] | None:
    """For each input axis: the working axis it runs along and its continuous working index at each input index.

    None unless every input axis maps onto one working axis (a permutation with flips and scales, as ``prepare``
    makes: orientation permutes, resampling keeps the direction).
    """
    to_working = np.linalg.inv(np.array(working_grid.GetDirection()).reshape(3, 3) @ np.diag(working_grid.GetSpacing()))
    matrix = to_working @ np.array(original.GetDirection()).reshape(3, 3) @ np.diag(original.GetSpacing())
    offset = to_working @ (np.array(original.GetOrigin()) - np.array(working_grid.GetOrigin()))
    axes = []
    for a in range(3):
        column = matrix[:, a]
        p = int(np.argmax(np.abs(column)))
        if np.abs(np.delete(column, p)).max() > 1e-6 * abs(column[p]):
            return None
        axes.append((p, column[p] * np.arange(original.GetSize()[a]) + offset[p]))
    if sorted(p for p, _ in axes) != [0, 1, 2]:
        return None
    return axes


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
