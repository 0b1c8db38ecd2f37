"""Working space and back (preprocess.py), and label clean-up (postprocess.py).

A segmentation is only as good as the geometry it is returned on: results must come back onto the input grid
voxel-exactly when nothing was resampled, closely when something was, whatever the input's orientation. The card's
intensity options must do what they say, and clean-up must never change which label a voxel has, only whether it
keeps one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.preprocessing.input_grid import probabilities_to_input_grid
from cadcore.preprocessing.working_space import enhance, normalise, prepare, prepare_label
from cadcore.segmentation.postprocess import clean_labels
from conftest import oblique_direction

SPACING = (0.7, 1.1, 2.5)
ORIGIN = (-12.5, 40.25, 7.0)


def image_from_ijk(array: np.ndarray, spacing: Sequence[float] = SPACING, origin: Sequence[float] = ORIGIN,
                   direction: Sequence[float] | None = None) -> sitk.Image:
    """numpy (I, J, K) -> SimpleITK image with the given geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection(direction if direction is not None else oblique_direction())
    return image


def ijk(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def ellipsoid_labels(shape: tuple[int, int, int], spacing: Sequence[float] = SPACING) -> np.ndarray:
    """Two touching ellipsoids (labels 1 and 2) in millimetres, so they stay blob-like on an anisotropic grid."""
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)
    centre = np.array(shape) * np.array(spacing) / 2
    radii = centre * 0.6
    inside = (((grid - centre) / radii) ** 2).sum(-1) < 1
    labels = np.zeros(shape, np.uint8)
    labels[inside] = 1
    labels[inside & (grid[..., 2] > centre[2])] = 2
    return labels


def one_hot(labels: np.ndarray, classes: int = 3) -> np.ndarray:
    return np.stack([(labels == c).astype(np.float32) for c in range(classes)])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


# --- round trip working space -> input grid ------------------------------------------------------------------------


def permuted_oblique_direction() -> tuple[float, ...]:
    """The shared oblique direction with its columns rotated, so going to RAS permutes axes as well as flipping."""
    return tuple(np.array(oblique_direction()).reshape(3, 3)[:, [1, 2, 0]].ravel())


@pytest.mark.parametrize("resample", [False, True], ids=["same-spacing", "resampled"])
def test_probabilities_round_trip(resample: bool) -> None:
    """Label on the oblique, anisotropic input → working space → one-hot → back: argmax gives the label again,
    exactly when no resampling happened, closely when it did."""
    shape = (36, 28, 14)
    rng = np.random.default_rng(0)
    labels = ellipsoid_labels(shape)
    direction = permuted_oblique_direction()
    image = image_from_ijk((rng.normal(100, 10, shape) + 50 * labels).astype(np.float32), direction=direction)
    label_image = image_from_ijk(labels, direction=direction)
    oriented_spacing = list(prepare(image, {"orientation": "RAS"}).grid.GetSpacing())  # SPACING, permuted
    assert oriented_spacing != list(SPACING)
    preprocessing = {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0] if resample else oriented_spacing,
                     "normalization": {"kind": "mr"}}
    working = prepare(image, preprocessing)
    assert working.resampled is resample
    working_labels = prepare_label(label_image, working, preprocessing)
    assert working_labels.shape == working.array.shape
    if not resample:  # an axis permutation only: same voxels, other order
        assert working.array.shape != shape and sorted(working.array.shape) == sorted(shape)
    back = probabilities_to_input_grid(one_hot(working_labels), working)
    assert back.shape == (3, *shape)
    result = back.argmax(0)
    if resample:
        for value in (1, 2):
            assert dice(result == value, labels == value) > 0.9
    else:
        assert np.array_equal(result, labels)
        assert np.array_equal(back, one_hot(labels))


def test_working_grid_keeps_physical_positions() -> None:
    """Each working voxel holds the input value at the same physical point (orientation is lossless)."""
    rng = np.random.default_rng(1)
    image = image_from_ijk(rng.normal(size=(9, 7, 5)).astype(np.float32))
    working = prepare(image, {"orientation": "RAS", "normalization": {"kind": "none"}})
    for index in [(0, 0, 0), (8, 6, 4), (3, 2, 1)]:
        point = image.TransformIndexToPhysicalPoint(index)
        working_index = working.grid.TransformPhysicalPointToIndex(point)
        assert working.array[working_index] == ijk(image)[index]


# --- orientation ---------------------------------------------------------------------------------------------------


def ras_and_restored_copies() -> tuple[sitk.Image, list[sitk.Image]]:
    """One anisotropic volume stored RAS, then the same physical volume stored LPS and with permuted axes.

    The copies are built by hand (array flips and transposes, geometry worked out here), not with DICOMOrient."""
    rng = np.random.default_rng(2)
    array = rng.normal(size=(6, 7, 5)).astype(np.float32)
    ras_direction = np.diag([-1.0, -1.0, 1.0])  # LPS physical space: i → R (-x), j → A (-y), k → S (+z)
    ras = image_from_ijk(array, direction=tuple(ras_direction.ravel()))
    n_i, n_j, _ = array.shape
    lps = image_from_ijk(array[::-1, ::-1, :], origin=ras.TransformIndexToPhysicalPoint((n_i - 1, n_j - 1, 0)),
                         direction=tuple(np.eye(3).ravel()))
    order = (2, 0, 1)  # store K first, then I, then J ("SRA")
    permuted_direction = ras_direction[:, order]  # column c is the direction of stored axis c
    permuted = image_from_ijk(array.transpose(order), spacing=[SPACING[a] for a in order],
                              direction=tuple(permuted_direction.ravel()))
    return ras, [lps, permuted]


@pytest.mark.parametrize("normalization", ["none", "mr"])
def test_stored_orientation_does_not_change_working_array(normalization: str) -> None:
    """The network must see the same array however the scanner or a converter stored the volume."""
    ras, copies = ras_and_restored_copies()
    preprocessing: dict[str, Any] = {"orientation": "RAS", "normalization": {"kind": normalization}}
    reference = prepare(ras, preprocessing)
    if normalization == "none":  # already RAS: nothing to do
        assert np.array_equal(reference.array, ijk(ras))
    for copy in copies:
        assert copy.GetDirection() != ras.GetDirection()
        working = prepare(copy, preprocessing)
        assert np.array_equal(working.array, reference.array)
        assert np.allclose(working.grid.GetSpacing(), reference.grid.GetSpacing())
        assert np.allclose(working.grid.GetOrigin(), reference.grid.GetOrigin())
        assert np.allclose(working.grid.GetDirection(), reference.grid.GetDirection())


def test_stored_orientation_round_trip_restores_each_grid() -> None:
    """Whatever the stored orientation, results go back onto that image's own voxel order."""
    ras, copies = ras_and_restored_copies()
    for image in [ras, *copies]:
        values = ijk(image)
        labels = (values > 0).astype(np.uint8)
        working = prepare(image, {"orientation": "RAS", "normalization": {"kind": "none"}})
        back = probabilities_to_input_grid(one_hot((working.array > 0).astype(np.uint8), 2), working)
        assert np.array_equal(back.argmax(0), labels)


# --- normalisation, enhancement ------------------------------------------------------------------------------------


def test_ct_window_clip_and_scale() -> None:
    array = np.linspace(-3000, 3000, 1000, dtype=np.float32).reshape(10, 10, 10)
    result = normalise(array, {"kind": "ct", "window": [-1000, 1000]})
    assert result.dtype == np.float32
    assert result.min() == 0.0 and result.max() == 1.0
    assert result.ravel()[500] == pytest.approx((array.ravel()[500] + 1000) / 2000, abs=1e-6)


def test_mr_percentile_clip_and_zscore() -> None:
    rng = np.random.default_rng(3)
    array = rng.gamma(2.0, 50.0, (20, 20, 20)).astype(np.float32)
    array[0, 0, 0] = 1e6  # an outlier the percentile clip must tame
    result = normalise(array, {"kind": "mr", "percentiles": [0.5, 99.5]})
    assert result.dtype == np.float32
    assert abs(float(result.mean())) < 1e-4 and float(result.std()) == pytest.approx(1.0, abs=1e-4)
    assert result.max() < 10.0


def test_normalisation_none_and_unknown() -> None:
    array = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    assert np.array_equal(normalise(array, {"kind": "none"}), array)
    with pytest.raises(CadError, match="unknown normalisation kind 'zscore'"):
        normalise(array, {"kind": "zscore"})
    image = image_from_ijk(array)
    with pytest.raises(CadError, match="normalisation"):
        prepare(image, {"normalization": {"kind": "zscore"}})


def noisy_image() -> sitk.Image:
    rng = np.random.default_rng(4)
    array = rng.normal(100, 20, (12, 12, 12)).astype(np.float32)
    array[3:9, 3:9, 3:9] += 80
    return image_from_ijk(array, spacing=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("options", [
    {"histogram_equalization": True},
    {"histogram_equalization": {"alpha": 0.5, "beta": 0.5}},
    {"denoise": {"kind": "curvature_flow", "iterations": 2}},
    {"denoise": {"kind": "median", "radius": 1}},
    {"denoise": {"kind": "gaussian", "sigma": 1.0}},
], ids=["he", "he-params", "curvature-flow", "median", "gaussian"])
def test_enhancement_changes_the_image(options: dict[str, Any]) -> None:
    image = noisy_image()
    enhanced = enhance(image, options)
    assert enhanced.GetSize() == image.GetSize()
    assert np.allclose(enhanced.GetOrigin(), image.GetOrigin())
    before, after = ijk(image), ijk(enhanced)
    assert np.all(np.isfinite(after))
    assert not np.allclose(before, after)
    if "denoise" in options:  # smoothing lowers the noise
        assert after[:3].std() < before[:3].std()
    working = prepare(image, {**options, "normalization": {"kind": "none"}})
    assert np.allclose(working.array, after)


def test_unknown_denoising_kind() -> None:
    with pytest.raises(CadError, match="unknown denoising kind 'bilateral'"):
        enhance(noisy_image(), {"denoise": {"kind": "bilateral"}})
    with pytest.raises(CadError, match="denoising"):
        prepare(noisy_image(), {"denoise": {"kind": "bilateral"}})


# --- foreground crop -----------------------------------------------------------------------------------------------


def test_foreground_crop_and_paste_back() -> None:
    """The network sees only the bounding box + margin; results outside it come back as background."""
    array = np.zeros((30, 24, 20), np.float32)
    array[10:16, 5:9, 12:14] = 100.0
    array[11, 6, 12] = 300.0
    image = image_from_ijk(array, spacing=(1.0, 1.0, 1.0), direction=tuple(np.eye(3).ravel()))
    preprocessing = {"orientation": "LPS", "crop_foreground": {"threshold": 50.0, "margin_voxels": 2},
                     "normalization": {"kind": "ct", "window": [0, 300]}}
    working = prepare(image, preprocessing)
    assert working.crop == (slice(8, 18), slice(3, 11), slice(10, 16))
    assert working.array.shape == (10, 8, 6)
    assert working.grid.GetSize() == (30, 24, 20)
    assert working.array.max() == 1.0  # normalised on the crop
    assert np.array_equal(prepare_label(image_from_ijk((array > 0).astype(np.uint8), spacing=(1, 1, 1),
                                                       direction=tuple(np.eye(3).ravel())), working, preprocessing),
                          (working.array > 0).astype(np.uint8))
    inside = np.zeros((3, *working.array.shape), np.float32)
    inside[1] = 1.0  # the network says label 1 everywhere it looked
    back = probabilities_to_input_grid(inside, working)
    assert back.shape == (3, 30, 24, 20)
    expected = np.zeros(array.shape, np.int64)
    expected[8:18, 3:11, 10:16] = 1
    assert np.array_equal(back.argmax(0), expected)
    assert np.all(back[0][expected == 0] == 1.0) and np.all(back[1:][:, expected == 0] == 0.0)


def test_foreground_crop_margin_clipped_and_empty() -> None:
    array = np.zeros((10, 10, 10), np.float32)
    array[0:2, 8:10, 4] = 10.0
    image = image_from_ijk(array, spacing=(1, 1, 1), direction=tuple(np.eye(3).ravel()))
    working = prepare(image, {"crop_foreground": {"threshold": 1.0, "margin_voxels": 3}})
    assert working.crop == (slice(0, 5), slice(5, 10), slice(1, 8))
    nothing = prepare(image, {"crop_foreground": {"threshold": 100.0}})
    assert nothing.crop is None and nothing.array.shape == (10, 10, 10)


# --- postprocess.clean_labels --------------------------------------------------------------------------------------


def islands() -> np.ndarray:
    """Label 1: a big block and a small island; label 2: a medium block and a single voxel."""
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:8, 2:8, 2:8] = 1  # 216 voxels
    labels[15:17, 15:17, 15:17] = 1  # 8 voxels
    labels[10:14, 2:6, 10:14] = 2  # 64 voxels
    labels[18, 2, 2] = 2  # 1 voxel
    return labels


def test_largest_component_per_label() -> None:
    labels = islands()
    result = clean_labels(labels, {"largest_component": True})
    assert result is not labels and np.array_equal(labels, islands())  # input untouched
    expected = islands()
    expected[15:17, 15:17, 15:17] = 0
    expected[18, 2, 2] = 0
    assert np.array_equal(result, expected)


def test_diagonal_neighbours_are_separate_components() -> None:
    """Face connectivity: voxels touching only at an edge are two islands."""
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    labels[3, 3, 1] = 1  # touches (2, 2, 1) along an edge only
    result = clean_labels(labels, {"largest_component": True})
    assert result[3, 3, 1] == 0 and result.sum() == 8


def test_fill_holes() -> None:
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2:9, 2:9, 2:9] = 1
    labels[5, 5, 5] = 0  # enclosed pinhole
    labels[4:6, 4:6, 4] = 0  # enclosed cavity
    labels[2, 5, 5] = 0  # a dent on the surface: open to the outside, stays
    result = clean_labels(labels, {"fill_holes": True})
    assert result[5, 5, 5] == 1 and np.all(result[4:6, 4:6, 4] == 1)
    assert result[2, 5, 5] == 0
    assert np.array_equal(clean_labels(labels, {}), labels)


def test_fill_holes_never_overwrites_another_label() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:8, 1:8, 1:8] = 1
    labels[4, 4, 4] = 2  # label 2 enclosed in label 1: a real structure, not a hole
    labels[3, 4, 4] = 0  # a hole next to it
    result = clean_labels(labels, {"fill_holes": True})
    assert result[4, 4, 4] == 2 and result[3, 4, 4] == 1


def test_min_size_without_largest_component() -> None:
    result = clean_labels(islands(), {"min_size_voxels": 10})
    expected = islands()
    expected[15:17, 15:17, 15:17] = 0  # 8 < 10
    expected[18, 2, 2] = 0
    assert np.array_equal(result, expected)
    result = clean_labels(islands(), {"min_size_voxels": 8})  # the minimum itself is kept
    assert np.all(result[15:17, 15:17, 15:17] == 1) and result[18, 2, 2] == 0
    single = np.zeros((5, 5, 5), np.uint8)
    single[2, 2, 2] = 1
    assert clean_labels(single, {"min_size_voxels": 2}).sum() == 0  # one island too small: removed too


@pytest.mark.parametrize("options", [
    {"largest_component": True},
    {"fill_holes": True},
    {"min_size_voxels": 10},
    {"largest_component": True, "fill_holes": True, "min_size_voxels": 3},
])
def test_cleanup_never_changes_a_label_value(options: dict[str, Any]) -> None:
    """Clean-up only removes (to 0) or fills (with the enclosing label); it never relabels a voxel."""
    rng = np.random.default_rng(5)
    labels = (rng.random((16, 16, 16)) < 0.3).astype(np.uint8) * rng.integers(1, 4, (16, 16, 16)).astype(np.uint8)
    labels[3:10, 3:10, 3:10] = 2
    labels[6, 6, 6] = 0
    result = clean_labels(labels, options)
    assert result.dtype == labels.dtype
    changed = result != labels
    assert np.all((result[changed] == 0) | (labels[changed] == 0))
    assert set(np.unique(result)) <= set(np.unique(labels))
