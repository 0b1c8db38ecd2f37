"""The ``pipeline`` section of a hippodeep card, read into :class:`HippodeepOptions`.

hippodeep's geometry is part of the trained model, not of the code: the 64³ grid its head and affine networks were
trained on, the MNI-like template grid the affine maps to, the 1 mm crop box in that template space and how the crop
is split into the two hemispheres the hippocampus network sees. The card states every one of these numbers, so the
pipeline (``cadcore.segmentation.hippodeep_pipeline``) holds no hidden constants and a card that cannot work is
refused when it is read, one line naming ``pipeline.<field>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cadcore.errors import CadError

Fail = Callable[[str, str], CadError]
STEM_SHRINK = 4  # the hippocampus network's valid convolutions take 2 + 2 voxels off each axis
POOLING = 4  # ... and it pools twice before upsampling back


@dataclass(frozen=True)
class HippodeepOptions:
    """Every number the hippodeep pipeline uses. Coordinates are RAS (the template's own convention); the pipeline
    converts them to the engine's LPS."""

    head_grid: int  # the field of view is resampled to head_grid³ for the head and affine networks
    template_origin_ras: tuple[float, float, float]  # the template grid's first voxel centre (mm)
    template_spacing: tuple[float, float, float]  # its voxel size (mm); its axes run towards L, A, S
    crop_origin_ras: tuple[float, float, float]  # the hippocampus crop's first voxel centre in template space
    crop_spacing: float  # the crop's voxel size (mm), axes towards L, A, S
    crop_shape: tuple[int, int, int]
    side_margin: int  # voxels skipped at each lateral end of the crop before a hemisphere's slab
    side_width: int  # a hemisphere's slab, along the left-right axis (the left one is mirrored)
    crop_trim: tuple[int, int, int]  # voxels dropped at both ends of each axis of the slab before the network
    brain_threshold: float  # the intracranial map is cut here (eTIV)
    hippocampus_threshold: float  # the network's output below this is background
    noise_floor: float  # the soft map brought back to the input grid is zeroed below this (fraction of 1)
    label_threshold: float  # the soft map is a label at or above this

    def side_shape(self) -> tuple[int, int, int]:
        """The shape of one hemisphere's slab as the network gets it."""
        return (self.side_width - 2 * self.crop_trim[0], self.crop_shape[1] - 2 * self.crop_trim[1],
                self.crop_shape[2] - 2 * self.crop_trim[2])


def _numbers(section: Mapping[str, Any], key: str, fail: Fail, count: int, kind: type) -> tuple[Any, ...]:
    value = section.get(key)
    ok = isinstance(value, list) and len(value) == count and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
        and (kind is float or float(v).is_integer()) for v in value)
    if not ok:
        raise fail(key, f"must be a list of {count} {'integers' if kind is int else 'numbers'}, got {value!r}")
    return tuple(kind(v) for v in value)


def _number(section: Mapping[str, Any], key: str, fail: Fail, low: float, high: float, kind: type = float) -> Any:
    value = section.get(key)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not np.isfinite(value) or (kind is int and not float(value).is_integer()):
        raise fail(key, f"must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not low <= value <= high:
        raise fail(key, f"must be between {low:g} and {high:g}, got {value!r}")
    return kind(value)


def read_options(section: Mapping[str, Any], fail: Fail) -> HippodeepOptions:
    """The typed options; every impossible value (one the networks or the crop arithmetic cannot use) is refused."""
    known = set(HippodeepOptions.__dataclass_fields__)
    unknown = sorted(set(section) - known)
    if unknown:
        raise fail(unknown[0], f"is not a hippodeep option (known: {', '.join(sorted(known))})")
    head_grid = _number(section, "head_grid", fail, 16, 512, int)
    if head_grid % 16:
        raise fail("head_grid", f"must be a multiple of 16 (the affine network pools four times), got {head_grid}")
    template_spacing = _numbers(section, "template_spacing", fail, 3, float)
    if min(template_spacing) <= 0:
        raise fail("template_spacing", f"must be positive, got {list(template_spacing)}")
    crop_shape = _numbers(section, "crop_shape", fail, 3, int)
    if min(crop_shape) <= 0:
        raise fail("crop_shape", f"must be positive, got {list(crop_shape)}")
    side_margin = _number(section, "side_margin", fail, 0, crop_shape[0], int)
    side_width = _number(section, "side_width", fail, 1, crop_shape[0], int)
    if side_margin + side_width > crop_shape[0]:
        raise fail("side_width", f"a slab of {side_width} after a margin of {side_margin} does not fit in the "
                                 f"crop's {crop_shape[0]} voxels")
    crop_trim = _numbers(section, "crop_trim", fail, 3, int)
    if min(crop_trim) < 0:
        raise fail("crop_trim", f"must not be negative, got {list(crop_trim)}")
    options = HippodeepOptions(
        head_grid=head_grid,
        template_origin_ras=_numbers(section, "template_origin_ras", fail, 3, float),
        template_spacing=template_spacing,
        crop_origin_ras=_numbers(section, "crop_origin_ras", fail, 3, float),
        crop_spacing=_number(section, "crop_spacing", fail, 0.1, 10.0),
        crop_shape=crop_shape, side_margin=side_margin, side_width=side_width, crop_trim=crop_trim,
        brain_threshold=_number(section, "brain_threshold", fail, 0.0, 1.0),
        hippocampus_threshold=_number(section, "hippocampus_threshold", fail, 0.0, 1.0),
        noise_floor=_number(section, "noise_floor", fail, 0.0, 1.0),
        label_threshold=_number(section, "label_threshold", fail, 0.0, 1.0),
    )
    side = options.side_shape()
    if any(edge <= STEM_SHRINK or (edge - STEM_SHRINK) % POOLING for edge in side):
        raise fail("crop_trim", f"leaves a slab of {list(side)} voxels; the hippocampus network needs each edge minus "
                                f"{STEM_SHRINK} to be a positive multiple of {POOLING}")
    # the slabs may share input voxels, but their outputs (the slab less trim and the network's border) must not meet
    if 2 * (side_margin + side_width - crop_trim[0] - STEM_SHRINK // 2) > crop_shape[0]:
        raise fail("side_width", f"the two hemispheres' outputs would overlap in the crop's {crop_shape[0]} voxels "
                                 f"(margin {side_margin}, width {side_width}, trim {crop_trim[0]})")
    if options.label_threshold < options.noise_floor:
        raise fail("label_threshold", f"is below noise_floor ({options.noise_floor}): labels would include noise")
    return options
