"""The ``meshnet`` pipeline's card options (brainchop's conventions), read into one frozen, typed object.

A MeshNet was trained on FreeSurfer-style conformed volumes (256³ voxels of 1 mm, LIA, uint8) scaled to [0, 1]
between two percentiles, so a card states those numbers rather than the engine guessing them. The speed options
say how the engine may restrict the work without changing a label: only the head's box (voxels above
``box_threshold`` of the scaled intensity, plus ``box_margin`` voxels) is labelled, streamed through the
layers ``tile_depth`` slices at a time with the network's full receptive-field halo. ``mask_model`` names another
meshnet model whose labels > 0 keep this model's labels (brainchop runs its atlas models after a brain extraction).
Every bad value is one line naming ``pipeline.<field>``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cadcore.errors import CadError
from cadcore.registry.card_reader import is_model_id, is_number

KNOWN = ("conform_size", "conform_spacing", "orientation", "uint8_percentile", "percentiles", "mask_model",
         "box_threshold", "box_margin", "tile_depth", "precision")
PRECISIONS = ("float32", "bfloat16")


def _orientation_codes() -> frozenset[str]:
    """Every 3-letter orientation code: one letter of each axis pair (L/R, A/P, I/S), in any order."""
    codes = set()
    for axes in itertools.permutations(("LR", "AP", "IS")):
        for letters in itertools.product(*axes):
            codes.add("".join(letters))
    return frozenset(codes)


ORIENTATIONS = _orientation_codes()


@dataclass(frozen=True)
class MeshNetOptions:
    conform_size: tuple[int, int, int] = (256, 256, 256)
    conform_spacing: float = 1.0  # mm, isotropic
    orientation: str = "LIA"  # FreeSurfer's conformed orientation
    uint8_percentile: float = 99.9  # intensity mapped to 255 when conforming to uint8 (the minimum maps to 0)
    percentiles: tuple[float, float] = (2.0, 98.0)  # scaled to [0, 1] between these, clipped
    mask_model: str | None = None
    box_threshold: float = 0.05  # of the scaled intensity: what counts as head for the head box
    box_margin: int = 4  # voxels around the head box that are still labelled
    tile_depth: int = 4  # slices per streaming step (memory per layer: about 2.5 x dilation + 3 x step slices)
    precision: str = "float32"  # bfloat16: about 5x faster on AVX512-BF16 CPUs, but some labels differ


def read_options(section: Mapping[str, Any], fail: Callable[[str, str], CadError]) -> MeshNetOptions:
    """The options from the card's ``pipeline`` section (without ``name`` and ``networks``)."""
    unknown = sorted(set(section) - set(KNOWN))
    if unknown:
        raise fail(unknown[0], f"is not a meshnet option (known: {', '.join(KNOWN)})")
    default = MeshNetOptions()
    values: dict[str, Any] = {}

    size = section.get("conform_size", list(default.conform_size))
    if not (isinstance(size, list) and len(size) == 3 and all(_integer(v) and 8 <= v <= 1024 for v in size)):
        raise fail("conform_size", f"must be three integers between 8 and 1024, got {size!r}")
    values["conform_size"] = tuple(int(v) for v in size)

    spacing = section.get("conform_spacing", default.conform_spacing)
    if not (is_number(spacing) and 0.1 <= spacing <= 10):
        raise fail("conform_spacing", f"must be a voxel size in mm between 0.1 and 10, got {spacing!r}")
    values["conform_spacing"] = float(spacing)

    orientation = section.get("orientation", default.orientation)
    if orientation not in ORIENTATIONS:
        raise fail("orientation", f"must be a 3-letter orientation code such as \"LIA\", got {orientation!r}")
    values["orientation"] = orientation

    top = section.get("uint8_percentile", default.uint8_percentile)
    if not (is_number(top) and 50 < top <= 100):
        raise fail("uint8_percentile", f"must be a percentile above 50 and at most 100, got {top!r}")
    values["uint8_percentile"] = float(top)

    percentiles = section.get("percentiles", list(default.percentiles))
    if not (isinstance(percentiles, list) and len(percentiles) == 2 and all(is_number(p) for p in percentiles)
            and 0 <= percentiles[0] < percentiles[1] <= 100):
        raise fail("percentiles", f"must be [low, high] with 0 <= low < high <= 100, got {percentiles!r}")
    values["percentiles"] = (float(percentiles[0]), float(percentiles[1]))

    mask_model = section.get("mask_model")
    if mask_model is not None and not (isinstance(mask_model, str) and is_model_id(mask_model)):
        raise fail("mask_model", f"must be a model id, got {mask_model!r}")
    values["mask_model"] = mask_model

    threshold = section.get("box_threshold", default.box_threshold)
    if not (is_number(threshold) and 0 <= threshold < 1):
        raise fail("box_threshold", f"must be a fraction of the scaled intensity in [0, 1), got {threshold!r}")
    values["box_threshold"] = float(threshold)

    margin = section.get("box_margin", default.box_margin)
    if not (_integer(margin) and 0 <= margin <= 1024):
        raise fail("box_margin", f"must be a number of voxels between 0 and 1024, got {margin!r}")
    values["box_margin"] = int(margin)

    depth = section.get("tile_depth", default.tile_depth)
    if not (_integer(depth) and 1 <= depth <= 1024):
        raise fail("tile_depth", f"must be a number of slices between 1 and 1024, got {depth!r}")
    values["tile_depth"] = int(depth)

    precision = section.get("precision", default.precision)
    if precision not in PRECISIONS:
        raise fail("precision", f"must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    values["precision"] = precision
    return MeshNetOptions(**values)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
