"""``hippocampus-whole-head`` end to end on hippodeep's own example T1 (../shared/weights; skipped when absent).

The reference ``hippodeep.py`` gives 3,161 / 3,344 mm³ (left / right) and an eTIV of 1,439,994 mm³ on this volume
(benchmarks/hippodeep_agreement.py measures it beside ``cad segment``: Dice 1.0 on both sides). Geometry is sacred:
the same head stored with flipped axes, or resampled onto an oblique anisotropic grid, must give the same
hippocampi, with labels on that input's exact grid.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, oblique_direction, require_shared

EXAMPLE = SHARED_DATA.parent / "weights" / "hippodeep" / "example_brain_t1.nii.gz"
REFERENCE_ML = {"left": 3.161, "right": 3.344, "etiv": 1439.994}  # hippodeep.py on EXAMPLE, its own csv


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


@pytest.fixture(scope="module")
def example() -> sitk.Image:
    return sitk.ReadImage(str(require_shared(EXAMPLE)))


@pytest.fixture(scope="module")
def package():
    from cadcore.registry import find_model

    return find_model("hippocampus-whole-head")


def run(image: sitk.Image, package):
    from cadcore.segmentation.predict import segment_image

    return segment_image(image, package, device="cpu")


@pytest.fixture(scope="module")
def cad_segment(example, tmp_path_factory) -> tuple[sitk.Image, dict]:
    """``cad segment`` on the example, run once: its labels and its sidecar's measures."""
    from cadcore.cli import main

    output = tmp_path_factory.mktemp("hippodeep") / "hippo.nii.gz"
    assert main(["segment", str(EXAMPLE), "-m", "hippocampus-whole-head", "-o", str(output), "--device", "cpu"]) == 0
    sidecar = json.loads(Path(f"{output}.json").read_text())
    assert "warnings" not in sidecar  # a whole-head 3D T1 of an adult: nothing to warn about
    return sitk.ReadImage(str(output)), sidecar["measures"]


def test_cad_segment_matches_the_reference_volumes_and_etiv(example, cad_segment):
    labels, measures = cad_segment
    assert same_grid(labels, example)
    assert set(np.unique(sitk.GetArrayFromImage(labels))) == {0, 1, 2}
    assert measures["hippocampus_left_ml"] == pytest.approx(REFERENCE_ML["left"], rel=0.01)
    assert measures["hippocampus_right_ml"] == pytest.approx(REFERENCE_ML["right"], rel=0.01)
    assert measures["etiv_ml"] == pytest.approx(REFERENCE_ML["etiv"], rel=0.005)
    # the labels (soft map cut at 0.5) hold about the soft volume, and left is on the subject's left (+x in LPS)
    assert measures["hippocampus_left_label_ml"] == pytest.approx(REFERENCE_ML["left"], rel=0.03)
    array = sitk.GetArrayFromImage(labels)
    centres = {value: example.TransformContinuousIndexToPhysicalPoint(
        np.argwhere(array == value).mean(0)[::-1].tolist()) for value in (1, 2)}
    assert centres[1][0] > 10 > -10 > centres[2][0]


def flipped_storage(image: sitk.Image) -> sitk.Image:
    """The same physical image with its first two voxel axes reversed (an LPS file read as RAS-ordered voxels)."""
    array = sitk.GetArrayFromImage(image)[:, ::-1, ::-1]
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(array))
    flipped.SetSpacing(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3) @ np.diag([-1.0, -1.0, 1.0])
    flipped.SetDirection(direction.ravel().tolist())
    size = image.GetSize()
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((size[0] - 1, size[1] - 1, 0)))
    return flipped


def oblique_anisotropic(image: sitk.Image) -> sitk.Image:
    """The head resampled (linear) onto an oblique grid with 1.4 × 1.9 × 2.3 mm voxels covering all of it."""
    direction = np.array(oblique_direction(20.0)).reshape(3, 3)
    spacing = np.array([1.4, 1.9, 2.3])
    corners = np.array([image.TransformIndexToPhysicalPoint([int(c) for c in corner]) for corner in np.array(
        np.meshgrid(*[[0, n - 1] for n in image.GetSize()], indexing="ij")).reshape(3, -1).T])
    local = corners @ direction  # coordinates along the new axes
    low, high = local.min(0), local.max(0)
    grid = sitk.Image([int(np.ceil(e)) + 1 for e in (high - low) / spacing], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((direction @ low).tolist())
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def test_flipped_storage_gives_the_same_labels_on_its_own_grid(example, package, cad_segment):
    original_labels, original_measures = cad_segment
    flipped_input = flipped_storage(example)
    flipped = run(flipped_input, package)
    assert same_grid(flipped.labels, flipped_input)
    back = sitk.GetArrayFromImage(flipped.labels)[:, ::-1, ::-1]
    for value in (1, 2):
        a, b = sitk.GetArrayFromImage(original_labels) == value, back == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.99
    for key in ("hippocampus_left_ml", "hippocampus_right_ml", "etiv_ml"):
        assert flipped.measures[key] == pytest.approx(original_measures[key], rel=0.01)


def test_oblique_anisotropic_grid_gives_the_same_volumes_on_its_own_grid(example, package):
    oblique_input = oblique_anisotropic(example)
    result = run(oblique_input, package)
    assert same_grid(result.labels, oblique_input)
    measures = result.measures
    assert measures["hippocampus_left_ml"] == pytest.approx(REFERENCE_ML["left"], rel=0.05)
    assert measures["hippocampus_right_ml"] == pytest.approx(REFERENCE_ML["right"], rel=0.05)
    assert measures["etiv_ml"] == pytest.approx(REFERENCE_ML["etiv"], rel=0.02)
    assert {1, 2} <= set(np.unique(sitk.GetArrayFromImage(result.labels)))


def test_a_scan_it_was_not_made_for_says_so():
    """An abdominal MR gave eTIV 2.7 L and 0.35 mL of "hippocampus"; thick-slice scans give tiny hippocampi: the
    sidecar (and cad segment's output) warns instead of reporting them silently."""
    from cadcore.segmentation.hippodeep_pipeline import plausibility_warnings

    head = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    fine = {"etiv_ml": 1440.0, "hippocampus_left_label_ml": 3.1, "hippocampus_right_label_ml": 3.3}
    assert plausibility_warnings(head, fine, "m") == []
    abdomen = {"etiv_ml": 2700.0, "hippocampus_left_label_ml": 0.35, "hippocampus_right_label_ml": 0.0}
    warnings = plausibility_warnings(head, abdomen, "m")
    assert len(warnings) == 3 and "eTIV 2.70 L" in warnings[0] and "left hippocampus 0.35 mL" in warnings[1]
    thick = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    thick.SetSpacing([0.9, 0.9, 6.5])
    assert any("6.5 mm" in w for w in plausibility_warnings(thick, fine, "m"))
