"""The CPU fast paths of ``cad segment`` give the results of the straightforward code they replace.

* ``labels_to_input_grid``: labels on the input grid without a full-resolution float map per class, against
  ``probabilities_to_input_grid(...).argmax(0)`` (SimpleITK, every class);
* ``bspline_resample``: the separable cubic B-spline, against ``sitk.Resample`` with ``sitkBSpline``;
* channels-last convolutions in ``predict_probabilities``, and batch norms folded into the convolutions, against the
  network as built.

``benchmarks/inference.py`` measures what they save on a CT-size volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from cadcore.preprocessing.input_grid import labels_to_input_grid, probabilities_to_input_grid
from cadcore.preprocessing.resampling import bspline_resample, resample_to_spacing
from cadcore.preprocessing.working_space import WorkingImage, prepare
from cadcore.segmentation.sliding_window import fold_batch_norm, predict_probabilities
from conftest import oblique_direction


def image_from_ijk(array: np.ndarray, spacing: Sequence[float], direction: Sequence[float],
                   origin: Sequence[float] = (3.0, -7.0, 11.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection(direction)
    return image


def smooth_probabilities(shape: tuple[int, ...], classes: int, seed: int) -> np.ndarray:
    """Softmax of smooth random logits: blobs with boundaries everywhere, like a network's output."""
    rng = np.random.default_rng(seed)
    logits = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), 1.5) * 20 for _ in range(classes)])
    probabilities = np.exp(logits - logits.max(0))
    return (probabilities / probabilities.sum(0)).astype(np.float32)


def permuted_oblique() -> tuple[float, ...]:
    return tuple(np.array(oblique_direction()).reshape(3, 3)[:, [1, 2, 0]].ravel())


@pytest.mark.parametrize("classes", [2, 3, 5])
@pytest.mark.parametrize("geometry", [
    ((37, 29, 15), (0.77, 1.13, 2.41), permuted_oblique(), [1.0, 1.0, 1.0]),  # oblique, permuted, up and down
    ((45, 41, 13), (0.71, 0.71, 4.3), tuple(np.eye(3).ravel()), [1.5, 1.5, 2.0]),  # thick slices, axis-aligned
], ids=["oblique-permuted", "thick-slices"])
def test_labels_to_input_grid_matches_every_class_argmax(geometry, classes: int) -> None:
    shape, spacing, direction, working_spacing = geometry
    image = image_from_ijk(np.zeros(shape, np.float32), spacing, direction)
    working = prepare(image, {"orientation": "RAS", "spacing": working_spacing, "normalization": {"kind": "none"}})
    assert working.resampled
    probabilities = smooth_probabilities(working.array.shape, classes, seed=classes)
    expected = probabilities_to_input_grid(probabilities, working).argmax(0)
    labels = labels_to_input_grid(probabilities, working, chunk_bytes=1 << 16)  # many chunks
    assert labels.shape == shape and labels.dtype == np.uint8
    assert len(np.unique(expected)) == classes
    # only float32 rounding at exact ties may differ
    assert np.count_nonzero(labels != expected) <= 1e-4 * labels.size


def test_labels_to_input_grid_exact_without_resampling_and_with_crop() -> None:
    shape = (20, 17, 9)
    array = np.zeros(shape, np.float32)
    array[4:15, 3:12, 2:7] = 100.0
    image = image_from_ijk(array, (0.9, 1.2, 3.0), permuted_oblique())
    working = prepare(image, {"orientation": "RAS", "crop_foreground": {"threshold": 50.0, "margin_voxels": 1},
                              "normalization": {"kind": "none"}})
    assert not working.resampled and working.crop is not None
    probabilities = smooth_probabilities(working.array.shape, 3, seed=7)
    assert np.array_equal(labels_to_input_grid(probabilities, working),
                          probabilities_to_input_grid(probabilities, working).argmax(0))


def test_labels_to_input_grid_falls_back_when_grids_are_not_aligned() -> None:
    """A working grid rotated against the input (never made by ``prepare``) takes SimpleITK's path."""
    image = image_from_ijk(np.zeros((16, 14, 12), np.float32), (1.0, 1.0, 1.0), tuple(np.eye(3).ravel()))
    grid = sitk.Image([12, 11, 10], sitk.sitkFloat32)
    grid.SetSpacing([1.4, 1.4, 1.4])
    grid.SetDirection(oblique_direction(10.0))
    grid.SetOrigin(image.GetOrigin())
    probabilities = smooth_probabilities((12, 11, 10), 2, seed=3)
    working = WorkingImage(probabilities[0], grid, image, resampled=True)
    assert np.array_equal(labels_to_input_grid(probabilities, working),
                          probabilities_to_input_grid(probabilities, working).argmax(0))


@pytest.mark.parametrize("case", [
    ((37, 29, 15), (0.7, 1.1, 2.5), (1.0, 1.0, 1.0), np.float32),
    ((40, 30, 20), (0.8, 0.8, 0.8), (1.5, 1.5, 2.0), np.int16),
    ((41, 33, 9), (0.6875, 0.6875, 6.5), (1.5, 1.5, 2.0), np.uint16),
    ((20, 4, 30), (1.0, 1.0, 1.0), (0.7, 0.4, 1.3), np.uint8),
], ids=["float-up-down", "ct-like", "thick-slices", "uint8-thin-axis"])
def test_separable_bspline_matches_simpleitk(case) -> None:
    shape, spacing, new_spacing, dtype = case
    rng = np.random.default_rng(0)
    values = ndimage.gaussian_filter(rng.normal(size=shape), 1.0) * 2000 + 1000
    image = image_from_ijk(values.astype(dtype) if dtype != np.uint8 else (values % 255).astype(dtype), spacing,
                           oblique_direction())
    size = [int(s) for s in np.maximum(1, np.round(np.array(shape) * np.array(spacing) / np.array(new_spacing)))]
    expected = sitk.Resample(image, size, sitk.Transform(), sitk.sitkBSpline, image.GetOrigin(), new_spacing,
                             image.GetDirection(), 0.0, image.GetPixelID())
    exact = sitk.GetArrayFromImage(sitk.Resample(image, size, sitk.Transform(), sitk.sitkBSpline, image.GetOrigin(),
                                                 new_spacing, image.GetDirection(), 0.0, sitk.sitkFloat64))
    result = resample_to_spacing(image, list(new_spacing), sitk.sitkBSpline)
    assert result.GetSize() == expected.GetSize() and result.GetPixelID() == expected.GetPixelID()
    assert np.allclose(result.GetOrigin(), expected.GetOrigin()) and result.GetSpacing() == expected.GetSpacing()
    assert result.GetDirection() == expected.GetDirection()
    ours, theirs = sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(expected)
    if dtype == np.float32:
        assert np.allclose(ours, exact, rtol=0, atol=1e-6 * np.abs(exact).max())
    else:  # integer casts truncate: one apart only where the exact value is an integer (up to rounding)
        differ = ours != theirs
        assert np.abs(ours.astype(float) - theirs)[differ].max(initial=0) <= 1
        assert np.all(np.abs(exact[differ] - np.round(exact[differ])) < 1e-6)
    assert np.all(theirs[exact == 0] == ours[exact == 0])  # beyond the last half voxel: 0 in both


def test_separable_bspline_is_used_for_scalar_3d_images() -> None:
    image = image_from_ijk(np.ones((8, 8, 8), np.float32), (1.0, 1.0, 1.0), tuple(np.eye(3).ravel()))
    direct = bspline_resample(image, [5, 5, 5], np.array([1.6, 1.6, 1.6]))
    via_prepare = resample_to_spacing(image, [1.6, 1.6, 1.6], sitk.sitkBSpline)
    assert np.array_equal(sitk.GetArrayFromImage(direct), sitk.GetArrayFromImage(via_prepare))


def test_channels_last_gives_the_same_probabilities() -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    volume = np.random.default_rng(0).normal(size=(40, 36, 20)).astype(np.float32)

    def network() -> torch.nn.Module:
        torch.manual_seed(0)
        return UNet(3, 1, 3, (8, 16, 32), (2, 2), num_res_units=1, norm="batch").eval()

    plain = predict_probabilities(network(), volume, [32, 32, 16], torch.device("cpu"), 0.25, 2)
    fast = predict_probabilities(network(), volume, [32, 32, 16], torch.device("cpu"), 0.25, 2, channels_last=True)
    assert np.allclose(plain, fast, atol=1e-5)


def test_folded_batch_norm_gives_the_same_outputs() -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    network = UNet(3, 1, 2, (8, 16, 32), (2, 2), num_res_units=2, norm="batch")
    network.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            network(torch.randn(2, 1, 16, 16, 16) * 3 + 1)
    network.eval()
    x = torch.randn(1, 1, 24, 16, 32)
    with torch.no_grad():
        expected = network(x)
        folded = fold_batch_norm(network)
        assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
        assert torch.allclose(folded(x), expected, atol=1e-5)
