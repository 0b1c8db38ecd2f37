"""Cascade (coarse-to-fine) inference: the coarse stage picks the region, the fine stage segments only there.

What must hold whatever the networks predict: the labelmap lies on the input's exact grid, the region the coarse
stage found (mapped through physical space, plus the card's margin) contains everything the fine stage labels, the
sidecar says whether the cascade was used or fell back, and ``--no-cascade`` really skips the coarse network.
The networks are tiny DynUNets whose output bias is forced, so each stage's answer is known in advance.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import cadcore.segmentation.cascade
from cadcore.cli import main
from cadcore.preprocessing.working_space import prepare
from cadcore.registry.networks import build_network, dynunet_spec
from cadcore.registry.packages import ModelPackage, save_package
from cadcore.segmentation.cascade import working_box_to_input
from conftest import TINY_LABELS, oblique_direction

SPEC = dynunet_spec(1, 3, [4, 8, 16], [1, 2, 2])
OUTPUT_BIAS = "output_block.conv.conv.bias"
OUTPUT_WEIGHT = "output_block.conv.conv.weight"
FOREGROUND = [-50.0, 50.0, -50.0]  # logits: class 1 wins at every voxel
BACKGROUND = [50.0, -50.0, -50.0]  # logits: background wins at every voxel
COARSE_PREPROCESSING: dict[str, Any] = {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0],
                                        "normalization": {"kind": "mr", "percentiles": [0.5, 99.5]}}


def tiny_state(seed: int, bias: list[float] | None) -> dict[str, torch.Tensor]:
    """A random tiny DynUNet's weights; with ``bias``, its output is that constant logit vector everywhere."""
    torch.manual_seed(seed)
    state = build_network(SPEC).state_dict()
    if bias is not None:
        state[OUTPUT_WEIGHT].zero_()  # state_dict tensors share storage with the parameters (and their aliases)
        state[OUTPUT_BIAS].copy_(torch.tensor(bias))
    return state


def make_cascade_package(folder: Path, coarse_bias: list[float] | None, fine_bias: list[float] | None = None,
                         margin_mm: float = 3.0, coarse_preprocessing: dict[str, Any] | None = None) -> ModelPackage:
    """Coarse at 2 mm, fine at 1 mm; both networks in one safetensors file under ``coarse.`` / ``fine.``."""
    state = {**{f"coarse.{k}": v for k, v in tiny_state(1, coarse_bias).items()},
             **{f"fine.{k}": v for k, v in tiny_state(2, fine_bias).items()}}
    card = {
        "format_version": 1,
        "id": folder.name,
        "version": "0.0.1",
        "task": "segmentation",
        "modality": "MR",
        "network": SPEC,
        "labels": TINY_LABELS,
        "preprocessing": {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0],
                          "normalization": {"kind": "mr", "percentiles": [0.5, 99.5]}},
        "inference": {"patch_size": [16, 16, 16], "overlap": 0.25, "sw_batch_size": 2},
        "postprocessing": {"largest_component": True, "fill_holes": True},
        "cascade": {
            "coarse": {"network": SPEC, "preprocessing": coarse_preprocessing or COARSE_PREPROCESSING,
                       "inference": {"patch_size": [16, 16, 16], "overlap": 0.25}},
            "margin_mm": margin_mm,
        },
    }
    return save_package(folder, card, state)


def oblique_volume() -> sitk.Image:
    """Anisotropic, oblique, non-zero origin; a dark border all round so a foreground crop has something to cut."""
    rng = np.random.default_rng(0)
    array = np.zeros((12, 28, 36), np.float32)  # (K, J, I)
    array[2:-2, 5:-5, 8:-8] = rng.normal(100, 15, (8, 18, 20))
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.1, 2.5))
    image.SetOrigin((-12.5, 40.25, 7.0))
    image.SetDirection(oblique_direction())
    return image


@pytest.fixture(autouse=True)
def one_cpu_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tiny networks run fastest on one thread, and a busy CI machine does not get oversubscribed
    (``configure_cpu_threads`` leaves the count alone when OMP_NUM_THREADS is set)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def volume_file(tmp_path: Path) -> Path:
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(oblique_volume(), str(path))
    return path


def segment(capsys: pytest.CaptureFixture[str], source: Path, package: ModelPackage, output: Path,
            *extra: str) -> tuple[sitk.Image, dict[str, Any]]:
    """Run ``cad segment`` in-process; return the labelmap and the sidecar."""
    code = main(["segment", str(source), "-m", str(package.folder), "-o", str(output), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    return sitk.ReadImage(str(output)), json.loads(Path(f"{output}.json").read_text())


def assert_same_grid(result: sitk.Image, reference: sitk.Image) -> None:
    assert result.GetSize() == reference.GetSize()
    assert np.allclose(result.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    assert np.allclose(result.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    assert np.allclose(result.GetDirection(), reference.GetDirection(), atol=1e-6)


def labels_ijk(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


# --- the whole pipeline -----------------------------------------------------------------------------------------


def test_coarse_finds_everything_roi_is_whole_image(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    volume_file: Path) -> None:
    """Foreground everywhere → the region is the whole volume, and the output is on the input grid."""
    package = make_cascade_package(tmp_path / "cascade-all", FOREGROUND)
    labels, report = segment(capsys, volume_file, package, tmp_path / "seg.nii.gz")
    reference = sitk.ReadImage(str(volume_file))
    assert_same_grid(labels, reference)
    assert set(np.unique(labels_ijk(labels))) <= {0, 1, 2}
    cascade = report["cascade"]
    assert cascade["used"] is True and "fallback" not in cascade
    assert cascade["roi_index"] == [0, 0, 0] and cascade["roi_size"] == list(reference.GetSize())
    assert cascade["roi_fraction"] == 1.0
    assert "coarse_s" in report["timings"]


def test_coarse_finds_nothing_falls_back_and_no_cascade_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              volume_file: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """No coarse foreground → the fine network runs on the whole volume and the sidecar says so.

    ``--no-cascade`` must give the same labels without running the coarse network at all."""
    package = make_cascade_package(tmp_path / "cascade-none", BACKGROUND)
    labels, report = segment(capsys, volume_file, package, tmp_path / "fallback.nii.gz")
    assert_same_grid(labels, sitk.ReadImage(str(volume_file)))
    cascade = report["cascade"]
    assert cascade["used"] is False and "no foreground" in cascade["fallback"]
    assert "roi_index" not in cascade

    def no_coarse(*_: Any, **__: Any) -> np.ndarray:
        raise AssertionError("--no-cascade ran the coarse network")

    monkeypatch.setattr(cadcore.segmentation.cascade, "predict_probabilities", no_coarse)
    skipped, report = segment(capsys, volume_file, package, tmp_path / "skipped.nii.gz", "--no-cascade")
    assert report["cascade"] is None and "coarse_s" not in report["timings"]
    assert_same_grid(skipped, labels)
    assert np.array_equal(labels_ijk(skipped), labels_ijk(labels))


def input_voxels_in_working_box(image: sitk.Image, grid: sitk.Image, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Input voxel indices whose centres fall inside the working-grid voxel box [low, high] (numpy geometry only)."""
    size = np.array(image.GetSize())
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    points = np.array(image.GetOrigin()) + (index * np.array(image.GetSpacing())) @ direction.T
    grid_direction = np.array(grid.GetDirection()).reshape(3, 3)
    continuous = ((points - np.array(grid.GetOrigin())) @ grid_direction) / np.array(grid.GetSpacing())
    inside = np.all((continuous >= low - 0.5) & (continuous <= high + 0.5), axis=1)
    return index[inside]


@pytest.mark.parametrize("crop", [False, True], ids=["whole", "foreground-crop"])
def test_coarse_region_bounds_fine_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str], volume_file: Path,
                                          monkeypatch: pytest.MonkeyPatch, crop: bool) -> None:
    """The coarse stage sees foreground only in a box: the region holds that box (mapped to input voxels) plus the
    margin, the fine stage labels exactly that region, and nothing outside it is labelled.

    With a foreground crop in the coarse preprocessing the box is in cropped coordinates, so this also checks the crop
    offset is added back."""
    margin_mm = 3.0
    preprocessing = dict(COARSE_PREPROCESSING)
    if crop:
        preprocessing["crop_foreground"] = {"threshold": 50.0, "margin_voxels": 1}
    package = make_cascade_package(tmp_path / "cascade-box", None, fine_bias=FOREGROUND, margin_mm=margin_mm,
                                   coarse_preprocessing=preprocessing)
    image = sitk.ReadImage(str(volume_file))
    working = prepare(image, preprocessing)
    assert (working.crop is not None) == crop
    shape = np.array(working.array.shape)
    box_low, box_high = shape // 3, shape // 2  # inclusive, in the coarse network's (cropped) array
    calls: list[tuple[int, ...]] = []

    def coarse_box(network: torch.nn.Module, array: np.ndarray, *_: Any, **__: Any) -> np.ndarray:
        calls.append(array.shape)
        probabilities = np.zeros((3, *array.shape), np.float32)
        probabilities[0] = 1.0
        window = tuple(slice(lo, hi + 1) for lo, hi in zip(box_low, box_high))
        probabilities[(0, *window)] = 0.0
        probabilities[(1, *window)] = 1.0
        return probabilities

    monkeypatch.setattr(cadcore.segmentation.cascade, "predict_probabilities", coarse_box)
    probabilities_path = tmp_path / "prob.nii.gz"
    labels, report = segment(capsys, volume_file, package, tmp_path / "seg.nii.gz",
                             "--probabilities", str(probabilities_path))
    assert calls == [tuple(shape)]
    assert_same_grid(labels, image)
    cascade = report["cascade"]
    assert cascade["used"] is True
    start, size = np.array(cascade["roi_index"]), np.array(cascade["roi_size"])
    stop = start + size  # exclusive

    offset = np.array([s.start for s in working.crop]) if crop else np.zeros(3, int)
    covered = input_voxels_in_working_box(image, working.grid, box_low + offset, box_high + offset)
    assert len(covered) > 0
    margin = margin_mm / np.array(image.GetSpacing())
    image_size = np.array(image.GetSize())
    must_low = np.clip(np.ceil(covered.min(0) - margin), 0, None)
    must_high = np.clip(np.floor(covered.max(0) + margin), None, image_size - 1)
    assert np.all(start <= must_low) and np.all(stop - 1 >= must_high), (start, stop, must_low, must_high)
    assert np.all(start > 0) and np.all(stop < image_size), "the box should lie inside: margins are then checked"
    # not much looser than box + margin (corners of an oblique box are allowed for: 2 voxels per side)
    assert np.all(size <= covered.max(0) - covered.min(0) + 1 + 2 * margin + 2 * (np.ceil(1 + 2 * margin) + 2))
    assert 0.0 < cascade["roi_fraction"] < 1.0
    assert cascade["roi_fraction"] == pytest.approx(np.prod(size) / np.prod(image_size), abs=1e-4)

    array = labels_ijk(labels)
    inside = np.zeros(array.shape, bool)
    inside[tuple(slice(a, b) for a, b in zip(start, stop))] = True
    assert np.all(array[~inside] == 0)
    assert np.all(array[inside] == 1)  # the fine network says "label 1" wherever it runs
    assert report["labels"][0]["voxels"] == int(np.prod(size))

    probabilities = sitk.ReadImage(str(probabilities_path))
    assert_same_grid(probabilities, image)
    values = sitk.GetArrayFromImage(probabilities).transpose(2, 1, 0, 3)  # (I, J, K, C)
    assert np.allclose(values.sum(-1), 1.0, atol=1e-3)
    assert np.all(values[~inside][:, 0] == 1.0)


# --- working_box_to_input ---------------------------------------------------------------------------------------------


def identity_image(size: tuple[int, int, int] = (20, 16, 12),
                   spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    return image


def test_box_identity_geometry_no_margin() -> None:
    """Same grid both sides: the box comes back (at most one voxel of slack per side), as index + size."""
    image = identity_image()
    start, size = working_box_to_input([4, 5, 6], [9, 8, 7], image, image, 0.0)
    stop = np.array(start) + np.array(size)
    assert all(isinstance(v, int) for v in [*start, *size])
    assert np.all(np.array(start) <= [4, 5, 6]) and np.all(np.array(start) >= [3, 4, 5])
    assert np.all(stop >= [10, 9, 8]) and np.all(stop <= [11, 10, 9])


def test_box_identity_geometry_margin_and_clipping() -> None:
    """The margin is in millimetres (so in voxels it depends on the spacing), and the box never leaves the image."""
    image = identity_image(spacing=(0.5, 1.0, 2.0))
    start, size = working_box_to_input([8, 7, 5], [10, 8, 6], image, image, 2.0)  # 4, 2, 1 voxels
    stop = np.array(start) + np.array(size)
    assert np.all(np.array(start) <= [4, 5, 4]) and np.all(np.array(start) >= [3, 4, 3])
    assert np.all(stop >= [15, 11, 8]) and np.all(stop <= [16, 12, 9])
    start, size = working_box_to_input([1, 1, 1], [18, 14, 10], image, image, 50.0)
    assert start == [0, 0, 0] and size == [20, 16, 12]
    start, size = working_box_to_input([0, 0, 0], [0, 0, 0], image, image, 0.0)
    assert min(size) >= 1 and start == [0, 0, 0]


def test_box_oblique_geometry_maps_through_physical_space(oblique_image: sitk.Image) -> None:
    """Coarse working grid (RAS, 2 mm) vs the oblique anisotropic input: every input voxel whose centre lies in the
    coarse box is inside the result, and the result is the box corners' extent (not the raw working indices)."""
    working = prepare(oblique_image, COARSE_PREPROCESSING)
    grid = working.grid
    assert grid.GetSize() != oblique_image.GetSize()
    low, high = np.array([2, 3, 4]), np.array([5, 6, 6])
    low = np.minimum(low, np.array(grid.GetSize()) - 2)
    high = np.minimum(high, np.array(grid.GetSize()) - 1)
    start, size = working_box_to_input(low, high, grid, oblique_image, 0.0)
    start, stop = np.array(start), np.array(start) + np.array(size)
    covered = input_voxels_in_working_box(oblique_image, grid, low, high)
    assert len(covered) > 0
    assert np.all(start <= covered.min(0)) and np.all(stop > covered.max(0))
    # the tightest axis-aligned box around the mapped corners, plus one voxel of slack per side
    corners = np.array([oblique_image.TransformPhysicalPointToContinuousIndex(
        grid.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner]))
        for corner in itertools.product(*zip(low - 0.5, high + 0.5))])
    image_size = np.array(oblique_image.GetSize())
    assert np.all(start >= np.clip(np.floor(corners.min(0)) - 1, 0, None))
    assert np.all(stop <= np.clip(np.ceil(corners.max(0)) + 2, None, image_size))
    assert np.all(start >= 0) and np.all(stop <= image_size) and np.all(stop > start)
    # a huge margin clips to the image
    start, size = working_box_to_input(low, high, grid, oblique_image, 1000.0)
    assert start == [0, 0, 0] and size == list(oblique_image.GetSize())


def test_small_coarse_blobs_do_not_stretch_the_region():
    """Scattered coarse false positives are dropped; a second lesion at least a tenth of the largest is kept."""
    from cadcore.segmentation.cascade import main_components

    foreground = np.zeros((40, 40, 20), bool)
    foreground[10:20, 10:20, 5:12] = True  # 700 voxels: the target
    foreground[30:34, 30:34, 2:7] = True  # 80 voxels: a second lesion (> 10 %)
    foreground[0, 39, 19] = foreground[39, 0, 0] = True  # single-voxel false positives at the corners
    kept = main_components(foreground, 0.1)
    assert kept[10:20, 10:20, 5:12].all() and kept[30:34, 30:34, 2:7].all()
    assert not kept[0, 39, 19] and not kept[39, 0, 0]
    assert np.array_equal(main_components(foreground, 0.0), foreground)
