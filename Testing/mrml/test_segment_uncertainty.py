"""SegmentationLogic's uncertainty map and out-of-distribution warnings (issue 18, Slicer side) on real MRML.

Against the stand-in engine of ``fake_engine.py`` (the contract's ``cad segment --uncertainty FILE [--strict]``,
``warning:`` lines and sidecar fields) through a real process: the map lies voxel for voxel on the input's oblique
grid with a heat colour map and a fixed [0, 1] window, is referenced from the segmentation, shows as the slice views'
foreground; the per-label summary is logged; each warning reaches ``onWarning`` once (stderr and sidecar), and is
kept on the node; ``--strict`` refuses; a map off the grid adds nothing. When the real engine has ``--uncertainty``
(after the engine branch is merged), the same run is repeated with it and the shipped tiny model.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from CADExtensionLib.overlays import GENERATED_HEATMAP_COLORS, showOverlay
from CADExtensionLib.process import SubprocessRunner
from CADSegmentLib.SegmentationLogic import (
    MAP_ATTRIBUTE,
    UNCERTAINTY_REFERENCE,
    WARNINGS_ATTRIBUTE,
    SegmentationLogic,
    uncertaintySummaryLines,
)

from conftest import make_tiny_segmentation_package

from .fake_engine import LABELS, expected_labels, make_fake_engine, write_case
from .test_batch_logic import OBLIQUE
from .test_segmentation_logic import add_volume, segment_names

WARNING = ("the input's field of view (250 x 250 x 180 mm) is far larger than the model's training data "
           "(at most 40 mm); try the interactive path (CAD AI effect, cad interact)")


@pytest.fixture
def engine(tmp_path):
    return make_fake_engine(tmp_path / "engine")


@pytest.fixture
def case(tmp_path):
    image = write_case(tmp_path / "case.nrrd", size=(14, 10, 9), seed=4, direction=OBLIQUE)
    return image, add_volume(image, "case")


def run_logic(engine, work, volume, **kwargs):
    logic = SegmentationLogic(runner=SubprocessRunner(), engineFolder=engine, python=sys.executable,
                              temporaryFolder=work)
    return logic.run(volume, model="/models/tiny-unet", device="cpu", **kwargs)


def test_uncertainty_map_is_loaded_on_the_input_grid_and_shown(mrml, engine, work, case, tmp_path, monkeypatch):
    import slicer

    monkeypatch.setenv("FAKE_CAD_ARGV", str(tmp_path / "argv.json"))
    image, volume = case
    logs: list[str] = []
    node = run_logic(engine, work, volume, uncertainty=True, onLog=logs.append)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[0] == "segment" and argv[2:6] == ["-m", "/models/tiny-unet", "-o", argv[5]]
    assert argv[6:] == ["--device", "cpu", "--uncertainty", str(work / argv[5].split("/")[-2] / "uncertainty.nrrd"),
                        "--force"]  # in the run's own temporary folder, next to the labelmap

    mapNode = node.GetNodeReference(UNCERTAINTY_REFERENCE)
    assert mapNode is not None and mapNode.GetName() == "case tiny-unet uncertainty"
    assert mapNode.GetAttribute(MAP_ATTRIBUTE) == "uncertainty"
    size = image.GetSize()
    expected = np.broadcast_to(np.linspace(0.0, 1.0, size[0], dtype=np.float32), image.GetSize()[::-1])
    assert np.array_equal(slicer.util.arrayFromVolume(mapNode), expected)
    assert _ijk(mapNode) == _ijk(volume)  # bit for bit, on an oblique grid
    display = mapNode.GetDisplayNode()
    assert display.GetColorNode().GetName() == GENERATED_HEATMAP_COLORS  # the bare core has no file colour tables
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.05)

    sidecarMeans = [float(expected[expected_labels(image) == label["value"]].mean()) for label in LABELS]
    assert f"uncertainty of anterior: mean {sidecarMeans[0]:.3f}" in logs
    assert f"uncertainty of posterior: mean {sidecarMeans[1]:.3f}" in logs
    assert any(line.startswith("uncertainty (mirror-tta, 8 passes): mean 0.500 over the volume") for line in logs)
    assert segment_names(node) == [label["name"] for label in LABELS]
    assert json.loads(node.GetAttribute(WARNINGS_ATTRIBUTE)) == []

    composite = mrml.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    assert showOverlay(mapNode, volume, 0.4) is True
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == (volume.GetID(), mapNode.GetID())
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    assert list(work.iterdir()) == []

    again = run_logic(engine, work, volume, outputSegmentationNode=node)  # no map this time: no stale reference
    assert again is node and node.GetNodeReference(UNCERTAINTY_REFERENCE) is None


def _ijk(node) -> list[float]:
    from CADExtensionLib.volumes import ijkToRASArray

    return [value for row in ijkToRASArray(node) for value in row]


def test_warnings_reach_on_warning_once_each_and_stay_on_the_node(mrml, engine, work, case, monkeypatch):
    monkeypatch.setenv("FAKE_CAD_WARNINGS", f"{WARNING}|spacing 3.0 mm is outside the training range")
    warnings: list[str] = []
    logs: list[str] = []
    node = run_logic(engine, work, case[1], onWarning=warnings.append, onLog=logs.append)
    assert warnings == [WARNING, "spacing 3.0 mm is outside the training range"]  # stderr and sidecar: once each
    assert json.loads(node.GetAttribute(WARNINGS_ATTRIBUTE)) == warnings
    assert logs.count(f"warning: {WARNING}") == 1
    assert node.GetNodeReference(UNCERTAINTY_REFERENCE) is None


def test_strict_refuses_and_adds_nothing(mrml, engine, work, case, monkeypatch, tmp_path):
    monkeypatch.setenv("FAKE_CAD_WARNINGS", WARNING)
    monkeypatch.setenv("FAKE_CAD_ARGV", str(tmp_path / "argv.json"))
    before = mrml.nodeIds()
    with pytest.raises(RuntimeError, match=r"segmentation failed: cad segment: error: .*field of view"):
        run_logic(engine, work, case[1], strict=True, uncertainty=True)
    assert "--strict" in json.loads((tmp_path / "argv.json").read_text())
    assert mrml.nodeIds() == before and list(work.iterdir()) == []


def test_a_map_off_the_grid_adds_nothing(mrml, engine, work, case, monkeypatch):
    monkeypatch.setenv("FAKE_CAD_BAD_MAP", "1")
    before = mrml.nodeIds()
    with pytest.raises(RuntimeError, match="segmentation failed: the uncertainty map is not on the volume's grid"):
        run_logic(engine, work, case[1], uncertainty=True)
    assert mrml.nodeIds() - before <= {n.GetID() for n in [mrml.scene.GetFirstNodeByName(GENERATED_HEATMAP_COLORS)]
                                       if n is not None}  # at most the shared colour table
    assert list(work.iterdir()) == []


def test_summary_lines_are_lenient():
    assert uncertaintySummaryLines(None) == []
    assert uncertaintySummaryLines({"labels": [{"name": "a"}, "x", {"value": 3, "mean": 0.25}]}) == [
        "uncertainty: no volume mean (normalised entropy, 0 = certain, 1 = undecided)",
        "uncertainty of label 3: mean 0.250"]
    assert uncertaintySummaryLines({"method": "mirror TTA (4 passes)", "passes": 4, "mean": 0.5})[0].startswith(
        "uncertainty (mirror TTA (4 passes)): mean 0.500 over the volume")


def test_real_engine_uncertainty_map(mrml, work, case, tmp_path):
    """The real engine and a tiny model: the same checks of grid and range (the values are the engine's
    business)."""
    import slicer

    model = make_tiny_segmentation_package(tmp_path / "models" / "tiny-unet", preprocessing={
        "orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "normalization": {"kind": "mr", "percentiles": [0.5, 99.5]}}
    ).folder
    volume = add_volume(sitk.ReadImage(str(tmp_path / "case.nrrd")), "real")
    logs: list[str] = []
    logic = SegmentationLogic(runner=SubprocessRunner(), temporaryFolder=work)
    node = logic.run(volume, model=str(model), device="cpu", uncertainty=True, onLog=logs.append)
    mapNode = node.GetNodeReference(UNCERTAINTY_REFERENCE)
    values = slicer.util.arrayFromVolume(mapNode)
    assert values.shape == slicer.util.arrayFromVolume(volume).shape and _ijk(mapNode) == _ijk(volume)
    assert 0.0 <= values.min() and values.max() <= 1.0
    assert any(line.startswith("uncertainty") for line in logs)


def test_uncertainty_option_is_off_for_no_model_and_bundles():
    from CADExtensionLib.model_summary import ModelSummary
    from CADSegmentLib import uncertaintyOption

    assert uncertaintyOption(None) == (False, "Select a model first.")
    enabled, tooltip = uncertaintyOption(ModelSummary("spleen", "segmentation", "/b", bundle=True))
    assert not enabled and "MONAI bundle" in tooltip
    enabled, tooltip = uncertaintyOption(ModelSummary("hippocampus-unet", "segmentation", "/m"))
    assert enabled and "entropy" in tooltip


def test_uncertainty_option_is_off_for_the_shipped_pipeline_models_and_on_for_the_unets(tmp_path):
    """The summaries read from the real shipped cards: the brain models (meshnet, hippodeep pipelines) have no
    uncertainty map, so the box is off with the reason; the U-Nets keep it."""
    from CADExtensionLib.models import ModelManagerLogic
    from CADSegmentLib import uncertaintyOption

    summaries = {model.id: model for model in ModelManagerLogic(tmp_path / "user-models").listModels()}
    for modelId, pipeline in (("brain-mask", "meshnet"), ("hippocampus-whole-head", "hippodeep")):
        assert summaries[modelId].pipeline == pipeline
        enabled, tooltip = uncertaintyOption(summaries[modelId])
        assert not enabled and f"own {pipeline} pipeline" in tooltip
    assert summaries["hippocampus-unet"].pipeline == "" and uncertaintyOption(summaries["hippocampus-unet"])[0]
