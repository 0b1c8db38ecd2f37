"""``cad segment --uncertainty``: mirror test-time augmentation, normalised entropy on the input's exact grid.

What must hold: the map is float32 in [0, 1] with the input's exact geometry (oblique, anisotropic, cascade region
or not), the labels are the TTA mean's argmax, the sidecar's summary is the map's own means, the number of passes
follows the axes training mirrored, and what cannot give a map (a pipeline model, a MONAI bundle, a bad output path)
is refused in one line before the image is read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.cli import main
from cadcore.preprocessing.input_grid import labels_to_input_grid
from cadcore.preprocessing.working_space import prepare
from cadcore.registry.networks import load_network
from cadcore.segmentation.postprocess import clean_labels
from cadcore.segmentation.predict import segment_image
from cadcore.segmentation.sliding_window import tta_probabilities
from cadcore.segmentation.uncertainty import normalised_entropy, passes_for
from conftest import make_tiny_segmentation_package, oblique_direction


def volume() -> sitk.Image:
    rng = np.random.default_rng(3)
    k, j, i = np.indices((14, 26, 30))
    inside = ((k - 7) / 5) ** 2 + ((j - 13) / 8) ** 2 + ((i - 15) / 9) ** 2 < 1
    image = sitk.GetImageFromArray((rng.normal(100, 10, inside.shape) + 60 * inside).astype(np.float32))
    image.SetSpacing((0.8, 1.2, 2.0))
    image.SetOrigin((-10.0, 22.5, 4.0))
    image.SetDirection(oblique_direction())
    return image


def assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(a, get)(), getattr(b, get)(), atol=1e-6), get


def test_normalised_entropy_is_zero_when_certain_and_one_when_uniform():
    certain = np.zeros((3, 2, 2, 2), np.float32)
    certain[1] = 1.0
    assert np.allclose(normalised_entropy(certain), 0.0, atol=1e-6)
    assert np.allclose(normalised_entropy(np.full((3, 2, 2, 2), 1 / 3, np.float32)), 1.0, atol=1e-5)
    half = np.stack([np.full((1, 1, 1), 0.5), np.full((1, 1, 1), 0.5), np.zeros((1, 1, 1))]).astype(np.float32)
    assert math.isclose(float(normalised_entropy(half)[0, 0, 0]), math.log(2) / math.log(3), rel_tol=1e-5)


def test_passes_follow_the_axes_training_mirrored(tmp_path):
    plain = make_tiny_segmentation_package(tmp_path / "plain")
    assert plain.card.mirror_axes == (0,) and passes_for(plain.card.mirror_axes) == 2  # the trainer's default
    three = make_tiny_segmentation_package(tmp_path / "three", training={"config": {"mirror_axes": [0, 1, 2]}})
    assert three.card.mirror_axes == (0, 1, 2) and passes_for(three.card.mirror_axes) == 8
    result = segment_image(volume(), three, "cpu", uncertainty=True)
    assert result.uncertainty_summary["passes"] == 8 and "I, J, K" in result.uncertainty_summary["method"]


def test_labels_are_the_tta_means_and_the_map_lies_on_the_input_grid(tmp_path):
    package = make_tiny_segmentation_package(tmp_path / "tiny", seed=4)
    image = volume()
    result = segment_image(image, package, "cpu", uncertainty=True)
    stage = package.card.main_stage
    working = prepare(image, stage.preprocessing)
    import torch

    mean = tta_probabilities(load_network(package, stage, torch.device("cpu")), working.array, [16, 16, 16],
                             torch.device("cpu"), [0], 0.25, 2, "gaussian")
    expected = clean_labels(labels_to_input_grid(mean, working), package.card.postprocessing)
    assert np.array_equal(sitk.GetArrayFromImage(result.labels), expected.transpose(2, 1, 0))
    assert result.uncertainty.shape == sitk.GetArrayFromImage(image).shape and result.uncertainty.dtype == np.float32
    assert 0.0 <= result.uncertainty.min() and result.uncertainty.max() <= 1.0 and result.uncertainty.max() > 0.0
    labels = sitk.GetArrayFromImage(result.labels)
    summary = result.uncertainty_summary
    for entry in summary["labels"]:
        inside = labels == entry["value"]
        assert entry["mean"] == (round(float(result.uncertainty[inside].mean()), 5) if inside.any() else 0.0)
    plain = segment_image(image, package, "cpu")
    assert plain.uncertainty is None and plain.uncertainty_summary is None


def test_cad_segment_writes_the_map_and_the_sidecar_summary(tmp_path, capsys):
    package = make_tiny_segmentation_package(tmp_path / "tiny", seed=4)
    source = tmp_path / "oblique.nrrd"
    image = volume()
    sitk.WriteImage(image, str(source))
    output, map_path = tmp_path / "seg.nii.gz", tmp_path / "uncertainty.nrrd"
    code = main(["segment", str(source), "-m", str(package.folder), "-o", str(output), "--uncertainty", str(map_path),
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and f"uncertainty:  {map_path}" in out
    written = sitk.ReadImage(str(map_path))
    assert_same_grid(written, image)
    assert written.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(written)
    sidecar = json.loads(Path(f"{output}.json").read_text())["uncertainty"]
    assert sidecar["file"] == str(map_path) and sidecar["passes"] == 2 and "entropy" in sidecar["method"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    foreground = labels > 0
    assert sidecar["mean"] == round(float((values[foreground] if foreground.any() else values).mean()), 5)
    assert [entry["value"] for entry in sidecar["labels"]] == [1, 2]


def test_cascade_map_is_zero_outside_the_region_and_on_the_input_grid(tmp_path, monkeypatch):
    from test_cascade import FOREGROUND, make_cascade_package, oblique_volume

    import cadcore.segmentation.cascade

    def coarse_box(network, array, *_, **__):  # the coarse stage finds a box in the middle
        probabilities = np.zeros((3, *array.shape), np.float32)
        probabilities[0] = 1.0
        window = tuple(slice(n // 3, n // 2 + 1) for n in array.shape)
        probabilities[(0, *window)], probabilities[(1, *window)] = 0.0, 1.0
        return probabilities

    monkeypatch.setattr(cadcore.segmentation.cascade, "predict_probabilities", coarse_box)
    image = oblique_volume()
    result = segment_image(image, make_cascade_package(tmp_path / "cascade", None, margin_mm=2.0), "cpu",
                           uncertainty=True)
    assert result.cascade["used"] and result.uncertainty.shape == sitk.GetArrayFromImage(image).shape
    index, size = result.cascade["roi_index"], result.cascade["roi_size"]
    inside = np.zeros(image.GetSize(), bool)
    inside[tuple(slice(i, i + s) for i, s in zip(index, size))] = True
    values = result.uncertainty.transpose(2, 1, 0)  # (I, J, K) like the region
    assert 0 < inside.sum() < inside.size and not values[~inside].any() and values[inside].max() > 0.01
    certain = make_cascade_package(tmp_path / "certain", None, fine_bias=FOREGROUND)
    assert np.allclose(segment_image(image, certain, "cpu", uncertainty=True).uncertainty, 0.0, atol=1e-4)


def test_pipeline_models_and_bundles_are_refused_before_reading(tmp_path, capsys):
    missing = tmp_path / "not_read.nii.gz"  # never read: the refusal comes first
    code = main(["segment", str(missing), "-m", "brain-structures", "-o", str(tmp_path / "s.nii.gz"),
                 "--uncertainty", str(tmp_path / "u.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--uncertainty is not available" in err and "pipeline" in err
    from test_bundle import make_bundle

    bundle = make_bundle(tmp_path / "bundle")
    code = main(["segment", str(missing), "-m", str(bundle), "-o", str(tmp_path / "s.nii.gz"),
                 "--uncertainty", str(tmp_path / "u.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "MONAI bundles" in err and str(bundle) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.parametrize("name, problem", [("u.png", "suffix"), ("exists.nii.gz", "exists"), ("seg.nii.gz", "twice")])
def test_a_bad_uncertainty_path_is_refused_before_reading(tmp_path, capsys, name, problem):
    package = make_tiny_segmentation_package(tmp_path / "tiny")
    (tmp_path / "exists.nii.gz").write_bytes(b"keep")
    code = main(["segment", str(tmp_path / "not_read.nii.gz"), "-m", str(package.folder), "-o",
                 str(tmp_path / "seg.nii.gz"), "--uncertainty", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(tmp_path / name) in err
    assert (tmp_path / "exists.nii.gz").read_bytes() == b"keep" and not (tmp_path / "seg.nii.gz").exists()


def test_fast_mode_gives_a_map_on_the_input_grid_too(tmp_path):
    package = make_tiny_segmentation_package(tmp_path / "fast", fast={"spacing": [2.0, 2.0, 2.0]})
    image = volume()
    result = segment_image(image, package, "cpu", fast=True, uncertainty=True)
    assert result.fast and result.working_spacing == [2.0, 2.0, 2.0]
    assert result.uncertainty.shape == sitk.GetArrayFromImage(image).shape and result.uncertainty.max() <= 1.0
    assert result.uncertainty_summary["passes"] == 2
