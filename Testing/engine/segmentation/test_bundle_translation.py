"""Recognised MONAI bundle pipelines on the engine's own path give MONAI's working array and MONAI's labels.

Per translated transform: the array :func:`cadcore.segmentation.bundle_fast.working_image` gives equals the one the
bundle's own transforms (built by ``monai.bundle``'s ConfigParser from the same JSON) give, on axis-aligned volumes.
End to end: the spleen-layout bundle's labels through the engine equal those through ``monai.bundle``. A bundle with
a transform we do not translate still runs (through ``monai.bundle``) and says which transform, and
``cad models show`` tells which path a bundle takes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_bundle import SPLEEN_INFERENCE, make_bundle

from cadcore.registry.bundles import read_bundle
from cadcore.segmentation.bundle_fast import working_image
from cadcore.segmentation.bundle_inference import run_bundle_noted
from cadcore.segmentation.bundle_translation import ENGINE_PATH, MONAI_PATH, Translation, translate
from conftest import run_cad

LOAD = [{"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"}]
ORIENT = {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"}
SPACING = {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"}
WINDOW = {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
          "clip": True}
# one pipeline per translated transform (after the loading steps every bundle has), and a few in combination
PIPELINES = {
    "Orientationd": [ORIENT],
    "Orientationd-LPI": [{**ORIENT, "axcodes": "LPI"}],
    "Spacingd": [SPACING],
    "ScaleIntensityRanged": [WINDOW],
    "ScaleIntensityRanged-noclip": [{**WINDOW, "clip": False, "b_min": -1.0, "b_max": 2.0}],
    "NormalizeIntensityd": [{"_target_": "NormalizeIntensityd", "keys": "image"}],
    "NormalizeIntensityd-nonzero": [{"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True}],
    "ScaleIntensityd": [{"_target_": "ScaleIntensityd", "keys": "image", "minv": -1.0, "maxv": 1.0}],
    "CropForegroundd": [WINDOW, {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"}],
    "CropForegroundd-margin": [WINDOW, {"_target_": "CropForegroundd", "keys": "image", "source_key": "image",
                                        "margin": 3, "allow_smaller": True}],
    "EnsureTyped-CastToTyped": [{"_target_": "EnsureTyped", "keys": "image"},
                                {"_target_": "CastToTyped", "keys": "image", "dtype": "$np.float32"}],
    "spleen": [ORIENT, SPACING, WINDOW, {"_target_": "EnsureTyped", "keys": "image"}],
    "crop-then-normalise": [ORIENT, SPACING, WINDOW,
                            {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"},
                            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True}],
}


def bundle_with(tmp_path: Path, preprocessing: list[dict] | None = None, post: list[dict] | None = None,
                name: str = "bundle") -> Path:
    config = copy.deepcopy(SPLEEN_INFERENCE)
    if preprocessing is not None:
        config["preprocessing"]["transforms"] = [*copy.deepcopy(LOAD), *copy.deepcopy(preprocessing)]
    if post is not None:
        config["postprocessing"]["transforms"] = post
    return make_bundle(tmp_path / name, config)


def axis_aligned_ct(tmp_path: Path, direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
                    nested: bool = False) -> tuple[sitk.Image, Path]:
    """A CT-like int16 volume (air, body, a bright blob), anisotropic, on an axis-aligned grid; ``nested``: its
    first and last voxel centres fall on the 1.5x1.5x2 mm working grid's (no voxel beyond the last working one)."""
    shape, spacing = ((15, 37, 41), (0.75, 0.75, 1.0)) if nested else ((14, 36, 40), (0.9, 1.1, 3.0))
    k, j, i = np.indices(shape)
    array = np.full(shape, -1000, np.int16)
    array[((i - 20) / 18) ** 2 + ((j - 18) / 16) ** 2 < 1] = 40
    array[((i - 26) / 6) ** 2 + ((j - 14) / 5) ** 2 + ((k - 7) / 4) ** 2 < 1] = 110
    array += (np.random.default_rng(0).normal(0, 8, array.shape)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 40.25, 7.0))
    image.SetDirection(direction)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return image, path


def monai_working_array(bundle: Path, source: Path) -> np.ndarray:
    """The bundle's own preprocessing, built from its JSON by monai.bundle, on the file."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    data = parser.get_parsed_content("preprocessing")({"image": str(source)})
    return np.asarray(data["image"][0].numpy(), dtype=np.float32)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, 0, 1, 0, -1, 0)],
                         ids=["identity", "permuted"])
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_working_array_equals_monai(tmp_path, name, direction):
    bundle = bundle_with(tmp_path, PIPELINES[name])
    translation = translate(read_bundle(bundle))
    assert translation.path == ENGINE_PATH, translation.reason
    image, source = axis_aligned_ct(tmp_path, direction)
    ours = working_image(image, translation.plan).array
    theirs = monai_working_array(bundle, source)
    assert ours.shape == theirs.shape
    scale = max(1.0, float(np.abs(theirs).max()))
    # float32 rounding of the same formulas; Spacingd's interpolation rounds differently (1e-6 of the HU range),
    # which a window of 221 HU and a std below 1 then enlarge about 1000-fold
    resampled = any(step["_target_"] == "Spacingd" for step in PIPELINES[name])
    assert np.abs(ours - theirs).max() <= (2e-5 if resampled else 2e-6) * scale


def confident(bundle: Path) -> None:
    """Scale the output layer so the classes seldom tie: random weights leave p(spleen) ≈ 0.5 almost everywhere,
    where float rounding alone (folded batch norm, channels-last) would flip labels."""
    path = bundle / "models" / "model.pt"
    state = torch.load(path, weights_only=True)
    last = [key for key in state if key.endswith(".weight")][-1]
    state[last] = state[last] * 40.0
    torch.save(state, path)


@pytest.mark.parametrize("nested", [True, False], ids=["nested-grid", "edge-beyond-working-grid"])
@pytest.mark.parametrize("pipeline", ["spleen", "crop-then-normalise"])
def test_end_to_end_labels_equal_monai_bundle(tmp_path, pipeline, nested):
    """Spleen layout plus KeepLargestConnectedComponentd and FillHolesd: engine path == monai.bundle path, also
    where input voxels lie beyond the last working voxel centre (Invertd's border padding) and after a crop."""
    post = copy.deepcopy(SPLEEN_INFERENCE["postprocessing"]["transforms"])
    post[3:3] = [{"_target_": "KeepLargestConnectedComponentd", "keys": "pred"},
                 {"_target_": "FillHolesd", "keys": "pred"}]
    folder = bundle_with(tmp_path, PIPELINES[pipeline], post=post)
    confident(folder)
    image, _ = axis_aligned_ct(tmp_path, nested=nested)
    bundle = read_bundle(folder)
    assert translate(bundle).plan.postprocessing == ["largest_component", "fill_holes"]
    cpu = torch.device("cpu")
    ours, timings, notes = run_bundle_noted(image, bundle, cpu)
    theirs, _, their_notes = run_bundle_noted(image, read_bundle(folder), cpu, translation=Translation(None, "test"))
    assert notes == [] and "preprocess_s" in timings and their_notes
    for result in (ours, theirs):
        assert result.GetSize() == image.GetSize() and result.GetOrigin() == image.GetOrigin()
        assert result.GetDirection() == image.GetDirection() and result.GetSpacing() == image.GetSpacing()
    a, b = sitk.GetArrayFromImage(ours) > 0, sitk.GetArrayFromImage(theirs) > 0
    assert 0.02 < a.mean() < 0.95  # a real segmentation, not all one class
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    # identical but for ties to float rounding (folded batch norm and channels-last change the last bits of the
    # logits; confident weights make that rare). One tie by construction: on the nested grid after a crop, the
    # input slab whose centres fall exactly on the first working voxel outside the crop (all classes 0 after
    # Invertd's zero padding) is background here, and whatever the inside neighbour says in MONAI, whose float
    # coordinate lands a hair inside; 111 voxels of one slab, Dice 0.9915 on this tiny volume
    assert dice >= (0.99 if nested and pipeline == "crop-then-normalise" else 0.999), dice


UNTRANSLATED = {
    "percentiles": ({"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 1, "upper": 99,
                   "b_min": 0, "b_max": 1}, "ScaleIntensityRangePercentilesd"),
    "nearest": ({**SPACING, "mode": "nearest"}, "Spacingd(mode='nearest')"),
}


@pytest.mark.parametrize("case", sorted(UNTRANSLATED))
def test_untranslated_bundle_falls_back_and_says_which(tmp_path, capsys, case):
    step, named = UNTRANSLATED[case]
    folder = bundle_with(tmp_path, [ORIENT, step])
    bundle = read_bundle(folder)
    translation = translate(bundle)
    assert translation.path == MONAI_PATH and named in translation.reason
    image, source = axis_aligned_ct(tmp_path)
    labels, _, notes = run_bundle_noted(image, bundle, torch.device("cpu"))
    assert labels.GetSize() == image.GetSize()
    assert len(notes) == 1 and "monai.bundle" in notes[0] and named in notes[0] and "\n" not in notes[0]
    output = tmp_path / "labels.nii.gz"  # the note reaches the user: the sidecar's notes and one stderr line
    code, _, err = run_cad(capsys, "segment", str(source), "-m", str(folder), "-o", str(output), "--device", "cpu")
    assert code == 0, err
    assert json.loads(Path(f"{output}.json").read_text())["notes"] == notes
    assert [line for line in err.splitlines() if line.startswith("note: ")] == [f"note: {notes[0]}"]
    code, out, err = run_cad(capsys, "models", "show", str(folder))
    assert code == 0, err
    shown = json.loads(out)["inference_path"]
    assert shown["path"] == MONAI_PATH and named in shown["reason"]


def test_models_show_names_engine_path(tmp_path, capsys):
    code, out, err = run_cad(capsys, "models", "show", str(bundle_with(tmp_path)))
    assert code == 0, err
    assert json.loads(out)["inference_path"] == {"path": ENGINE_PATH, "reason": None}


def test_postprocessing_without_invertd_is_not_translated(tmp_path):
    post = [s for s in SPLEEN_INFERENCE["postprocessing"]["transforms"] if s["_target_"] != "Invertd"]
    translation = translate(read_bundle(bundle_with(tmp_path, post=post)))
    assert translation.path == MONAI_PATH and "AsDiscreted" in translation.reason  # argmax before any inversion
