"""Label clean-up from the model card: largest connected component, hole filling, minimum component size.

U-Nets leave small false-positive islands and pinholes; for single-structure labels (an organ, a hippocampus head)
keeping the largest component is the standard fix (nnU-Net applies it when it helps on validation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

STRUCTURE = ndimage.generate_binary_structure(3, 1)


def clean_labels(labels: np.ndarray, options: dict[str, Any], spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """Apply the card's ``postprocessing`` options to an integer label array (returns a new array)."""
    result = labels.copy(order="K")  # keeps the memory layout: a transposed view copies without transposing
    keep_largest = options.get("largest_component", False)
    min_size = int(options.get("min_size_voxels", 0))
    if not (keep_largest or min_size or options.get("fill_holes")):
        return result  # nothing asked: skip labelling each value's components (seconds on a CT)
    present = np.bincount(labels.ravel(order="K")) if labels.dtype == np.uint8 else None
    values = np.flatnonzero(present) if present is not None else np.unique(labels)
    for value in (int(v) for v in values if v != 0):
        mask = result == value
        components, count = ndimage.label(mask, structure=STRUCTURE)
        if count > 1 or min_size:
            sizes = np.bincount(components.ravel())[1:]
            if keep_largest:
                keep = np.zeros(count + 1, dtype=bool)
                keep[1 + int(np.argmax(sizes))] = True
            else:
                keep = np.concatenate([[False], sizes >= min_size])
            result[mask & ~keep[components]] = 0
        if options.get("fill_holes"):
            filled = ndimage.binary_fill_holes(result == value)
            result[filled & (result == 0)] = value
    return result
