"""ClassificationLogic end to end on real MRML and a real engine: an oblique, anisotropic volume node with a bright
lesion and a segment over it, classified by the tiny random ResNet in process and as a real subprocess; point input
in RAS (list, fiducial, transformed volume); baseline packages (no heatmap); failures; cancel leaving nothing."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from CADClassifyLib import (
    ClassificationCancelled,
    ClassificationLogic,
    InProcessRunner,
    heatmapColorNode,
    pointInVolumeRAS,
    showHeatmapOverlay,
)
from CADExtensionLib.process import SubprocessRunner
from CADExtensionLib.volumes import exportVolumeToFile, ijkToRASArray

from conftest import make_tiny_classification_package, make_tiny_segmentation_package

from .conftest import processAlive
from .test_geometry import oblique_ijk_to_ras
from .test_segmentation_logic import SlowRunner, _wait_for

RUNNERS = {"in-process": InProcessRunner, "subprocess": SubprocessRunner}
SHAPE = (14, 22, 18)  # (K, J, I)
SPACING = (1.3, 0.9, 2.2)
ORIGIN = (-40.0, 25.0, 12.5)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    return make_tiny_classification_package(tmp_path_factory.mktemp("models") / "tiny-resnet").folder


@pytest.fixture(scope="module")
def tiny_baseline(tmp_path_factory):
    """A real classical-baseline package (SVM on the engine's 33 hand-crafted features), fitted on random rows."""
    from cadcore.classification.baseline import BaselineClassifier
    from cadcore.classification.radiomics import FEATURE_NAMES
    from cadcore.registry.packages import save_package

    rng = np.random.default_rng(0)
    features = rng.normal(size=(24, len(FEATURE_NAMES)))
    labels = np.repeat([0, 1], 12)
    classifier = BaselineClassifier.fit("svm", {"C": 1.0, "gamma": "scale"}, features, labels, list(FEATURE_NAMES))
    card = {"format_version": 1, "id": "tiny-baseline", "version": "0.0.1", "task": "classification",
            "classes": [{"value": 0, "name": "benign"}, {"value": 1, "name": "malignant"}],
            "roi": {"size": [16, 16, 16], "spacing": [2.0, 2.0, 2.0], "fit": "fixed", "input": "image",
                    "orientation": "RAS"},
            "preprocessing": {"normalization": {"kind": "none"}}, "network": classifier.card_section()}
    return save_package(tmp_path_factory.mktemp("models") / "tiny-baseline", card, classifier.state_tensors()).folder


@pytest.fixture
def case(mrml):
    """Volume node (oblique, anisotropic, non-zero origin) with a bright ellipsoid, and a segmentation holding a
    'lesion' segment over it plus an unrelated 'other' segment. Returns (volume, segmentation, lesion mask KJI)."""
    import slicer

    rng = np.random.default_rng(3)
    array = rng.normal(100, 15, size=SHAPE).astype(np.float32)
    k, j, i = np.indices(SHAPE)
    lesion = ((k - 6) / 3.0) ** 2 + ((j - 12) / 5.0) ** 2 + ((i - 8) / 4.0) ** 2 <= 1
    array[lesion] += 200
    volume = slicer.util.addVolumeFromArray(array, oblique_ijk_to_ras(SPACING, ORIGIN), "lesion_case")
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    lesionId = segmentation.GetSegmentation().AddEmptySegment("", "lesion")
    otherId = segmentation.GetSegmentation().AddEmptySegment("", "other")
    slicer.util.updateSegmentBinaryLabelmapFromArray(lesion.astype(np.uint8), segmentation, lesionId, volume)
    corner = np.zeros(SHAPE, dtype=np.uint8)
    corner[:3, :3, :3] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(corner, segmentation, otherId, volume)
    return volume, segmentation, lesion


def ras_of(volume, kji) -> np.ndarray:
    """RAS of (continuous) voxel indices given as (k, j, i)."""
    ijk = np.array([kji[2], kji[1], kji[0], 1.0])
    return (np.array(ijkToRASArray(volume)) @ ijk)[:3]


def table_rows(tableNode) -> dict[str, tuple[float, float]]:
    table = tableNode.GetTable()
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == [
        "Class", "Probability", "Uncalibrated probability"]
    return {table.GetValue(r, 0).ToString(): (table.GetValue(r, 1).ToDouble(), table.GetValue(r, 2).ToDouble())
            for r in range(table.GetNumberOfRows())}


@pytest.mark.parametrize("runner_name", sorted(RUNNERS))
def test_segment_lesion_gives_table_and_heatmap_on_the_volume_grid(mrml, case, tiny_classifier, work, runner_name):
    import slicer

    volume, segmentation, lesion = case
    before = mrml.nodeIds()
    finished: list[tuple] = []
    progress: list[int] = []
    logic = ClassificationLogic(runner=RUNNERS[runner_name](), temporaryFolder=work)
    result = logic.run(volume, model=str(tiny_classifier), segmentationNode=segmentation, segmentId="lesion",
                       device="cpu", onProgress=progress.append, onFinished=lambda *args: finished.append(args))

    assert finished == [(result, None)] and not logic.isRunning() and progress == [100]
    assert list(work.iterdir()) == []  # exported volume, mask, result JSON and heatmap file are gone
    report = result.report
    assert report["classes"] == ["benign", "malignant"] and result.predicted in report["classes"]
    assert result.probabilities == report["probabilities"] and sum(result.probabilities.values()) == pytest.approx(1)
    rows = table_rows(result.tableNode)
    assert list(rows) == report["classes"]
    for name, (calibrated, raw) in rows.items():
        assert calibrated == report["probabilities"][name] and raw == report["probabilities_uncalibrated"][name]
    assert result.tableNode.GetName() == "lesion_case tiny-resnet classification"
    assert result.tableNode.GetAttribute("CADClassify.predicted") == result.predicted
    assert_feature_table(result)

    # the mask reached the engine on the right grid, in the right world frame: the ROI is centred on the lesion
    assert report["roi"]["source"] == "mask" and report["roi"]["label"] == 1
    assert np.allclose(report["roi"]["centre_ras"], ras_of(volume, np.argwhere(lesion).mean(axis=0)), atol=1e-3)

    heatmap = result.heatmapNode
    assert heatmap.GetName() == "lesion_case tiny-resnet heatmap"
    assert np.array_equal(ijkToRASArray(heatmap), ijkToRASArray(volume))  # exactly, not merely close
    values = slicer.util.arrayFromVolume(heatmap)
    assert values.shape == slicer.util.arrayFromVolume(volume).shape == SHAPE
    assert np.isfinite(values).all() and values.max() > 0
    peak = np.unravel_index(int(np.argmax(values)), values.shape)
    assert np.allclose(ras_of(volume, peak), result.heatmapPeakRAS, atol=1e-2)  # K,J,I ↔ RAS agree with the engine
    display = heatmap.GetDisplayNode()
    assert display.GetColorNodeID() == heatmapColorNode(mrml.scene).GetID()
    assert display.GetApplyThreshold() and display.GetWindowLevelMax() == pytest.approx(float(values.max()))

    colour = heatmapColorNode(mrml.scene).GetID()
    added = {result.tableNode.GetID(), result.featureTableNode.GetID(), heatmap.GetID(), display.GetID(), colour}
    assert mrml.nodeIds() - before == added  # no export labelmap, colour table or display node left over


def test_point_input_in_ras_list_fiducial_and_transformed_volume(mrml, case, tiny_classifier, work):
    import vtk

    volume, _, lesion = case
    centre = ras_of(volume, np.argwhere(lesion).mean(axis=0))
    logic = ClassificationLogic(runner=InProcessRunner(), temporaryFolder=work)
    result = logic.run(volume, model=str(tiny_classifier), pointRAS=[float(v) for v in centre], sizeMM=24,
                       heatmap=False)
    roi = result.report["roi"]
    assert roi["source"] == "point" and np.allclose(roi["centre_ras"], centre, atol=1e-6)
    assert result.heatmapNode is None and result.report["heatmap"] is None

    # the volume moved 10 mm right: a world point (a fiducial on the moved lesion) is sent in the volume's frame
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    fiducial = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lesion point")
    fiducial.AddControlPointWorld(vtk.vtkVector3d(*(centre + [10.0, 0.0, 0.0])))
    assert np.allclose(pointInVolumeRAS(volume, fiducial), centre, atol=1e-9)
    result = logic.run(volume, model=str(tiny_classifier), pointRAS=fiducial)
    assert np.allclose(result.report["roi"]["centre_ras"], centre, atol=1e-6)
    assert result.heatmapNode.GetTransformNodeID() == transform.GetID()  # overlays the moved volume
    assert np.array_equal(ijkToRASArray(result.heatmapNode), ijkToRASArray(volume))
    assert list(work.iterdir()) == []
    with pytest.raises(ValueError, match="no control point"):
        pointInVolumeRAS(volume, mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "empty"))


def assert_feature_table(result) -> None:
    """The engine's hand-crafted ROI features, one row each, values equal to the report's."""
    from cadcore.classification.radiomics import FEATURE_NAMES

    table = result.featureTableNode.GetTable()
    assert table.GetNumberOfRows() == len(FEATURE_NAMES) == len(result.report["features"])
    for row, name in enumerate(FEATURE_NAMES):
        group, _, short = name.partition("_")
        assert table.GetValueByName(row, "Feature").ToString() == short
        assert table.GetValueByName(row, "Group").ToString() == group
        assert table.GetValueByName(row, "Value").ToDouble() == pytest.approx(result.report["features"][name])


def test_baseline_model_gives_probabilities_and_no_heatmap(mrml, case, tiny_baseline, work):
    volume, segmentation, _ = case
    before = mrml.nodeIds()
    logic = ClassificationLogic(runner=InProcessRunner(), temporaryFolder=work)
    result = logic.run(volume, model=str(tiny_baseline), segmentationNode=segmentation, segmentId="lesion")
    assert result.heatmapNode is None
    assert_feature_table(result)
    assert result.report["calibrated"] is False
    assert {name: calibrated for name, (calibrated, _) in table_rows(result.tableNode).items()} == \
        result.probabilities
    assert mrml.nodeIds() - before == {result.tableNode.GetID(), result.featureTableNode.GetID()}
    assert showHeatmapOverlay(result.heatmapNode, volume) is False
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("runner_name", sorted(RUNNERS))
def test_segmentation_model_fails_with_the_engines_message(mrml, case, work, tmp_path, runner_name):
    volume, segmentation, _ = case
    model = make_tiny_segmentation_package(tmp_path / "tiny-unet").folder
    before = mrml.nodeIds()
    results: list[tuple] = []
    logic = ClassificationLogic(runner=RUNNERS[runner_name](), temporaryFolder=work)
    with pytest.raises(RuntimeError, match=r"cad classify: error: .*tiny-unet: is a segmentation model; cad classify "
                                           r"needs a classification model"):
        logic.run(volume, model=str(model), segmentationNode=segmentation, segmentId="lesion",
                  onFinished=lambda *args: results.append(args))
    assert results and results[0][0] is None and "segmentation model" in results[0][1]
    assert mrml.nodeIds() == before and list(work.iterdir()) == [] and not logic.isRunning()


def test_bad_requests_fail_before_anything_is_written(mrml, case, tiny_classifier, work):
    volume, segmentation, _ = case
    empty = segmentation.GetSegmentation().AddEmptySegment("", "empty")
    before = mrml.nodeIds()
    logic = ClassificationLogic(runner=InProcessRunner(), temporaryFolder=work)
    model = str(tiny_classifier)
    cases = [
        ({"segmentationNode": segmentation, "pointRAS": [0, 0, 0]}, "not both"),
        ({"segmentationNode": segmentation}, "3 segments .*say which"),
        ({"segmentationNode": segmentation, "segmentId": "nothing"}, "no segment is named 'nothing'"),
        ({"segmentationNode": segmentation, "segmentId": empty}, "segment 'empty' is empty"),
        ({"segmentId": "lesion"}, "segmentId needs segmentationNode"),
        ({"sizeMM": 20}, "sizeMM needs centerRAS"),
        ({"pointRAS": [0, 0]}, "three"),
        ({"pointRAS": [0, 0, 0], "sizeMM": -1}, "positive"),
        ({"pointRAS": [0, 0, 0], "device": "gpu"}, "unknown device"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            logic.run(volume, model=model, **kwargs)
        assert mrml.nodeIds() == before and list(work.iterdir()) == [] and not logic.isRunning(), kwargs


@pytest.mark.parametrize("defer", [False, True], ids=["direct-callbacks", "deferred-callbacks"])
def test_cancel_leaves_no_process_no_files_no_nodes(mrml, case, work, defer):
    volume, segmentation, _ = case
    before = mrml.nodeIds()
    runner = SlowRunner(deferCallbacks=defer)
    logs: list[str] = []
    results: list[tuple] = []
    logic = ClassificationLogic(runner=runner, temporaryFolder=work)
    assert logic.run(volume, model="some-classifier", segmentationNode=segmentation, segmentId="lesion", wait=False,
                     onLog=logs.append, onFinished=lambda *args: results.append(args)) is None
    argv = runner.engineArgv
    assert argv[1:4] == ["-m", "cadcore", "classify"] and argv[argv.index("--label") + 1] == "1"
    (workspace,) = work.iterdir()
    assert sorted(p.name for p in workspace.iterdir()) == ["input.nrrd", "mask.nrrd"]
    _wait_for(lambda: logic.processEvents() >= 0 and bool(logs))
    child = int(logs[0].split()[1])
    assert processAlive(runner.pid) and processAlive(child)

    assert logic.cancel() is True
    _wait_for(lambda: not processAlive(child), 5)
    assert not processAlive(runner.pid)
    assert list(work.iterdir()) == [] and mrml.nodeIds() == before
    assert results == [(None, "cancelled")] and not logic.isRunning() and logic.cancel() is False


def test_cancel_from_another_thread_stops_a_blocking_run(mrml, case, work):
    volume, _, _ = case
    before = mrml.nodeIds()
    logic = ClassificationLogic(runner=SlowRunner(), temporaryFolder=work)
    lines: list[str] = []

    def onLog(line: str) -> None:
        lines.append(line)
        threading.Thread(target=logic.cancel).start()

    with pytest.raises(ClassificationCancelled):
        logic.run(volume, model="some-classifier", pointRAS=[0.0, 0.0, 0.0], onLog=onLog)
    assert lines and list(work.iterdir()) == [] and mrml.nodeIds() == before
    _wait_for(lambda: not processAlive(int(lines[0].split()[1])), 5)


def test_show_heatmap_overlay_sets_every_slice_view(mrml, case):
    import slicer

    volume, _, _ = case
    heatmap = slicer.util.addVolumeFromArray(np.zeros(SHAPE, np.float32), np.array(ijkToRASArray(volume)), "heat")
    assert showHeatmapOverlay(heatmap, volume, 0.4) is False  # slicer-core has no slice views: nothing to do
    composites = [mrml.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(2)]
    assert showHeatmapOverlay(heatmap, volume, 0.4) is True
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() == heatmap.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    with pytest.raises(ValueError):
        showHeatmapOverlay(heatmap, volume, 1.5)


def test_heatmap_colours_prefer_slicers_table_else_one_generated_table(mrml):
    generated = heatmapColorNode(mrml.scene)
    assert generated.IsA("vtkMRMLColorTableNode") and generated.GetNumberOfColors() == 256
    assert heatmapColorNode(mrml.scene) is generated  # found again, not duplicated
    first, last = [0.0] * 4, [0.0] * 4
    generated.GetColor(0, first)
    generated.GetColor(255, last)
    assert sum(first[:3]) < 0.1 and sum(last[:3]) > 2.5  # dark to bright
    # the ID the Slicer application gives its file-based Inferno table (ColorFiles/Inferno.txt)
    inferno = mrml.scene.AddNewNodeByClassWithID("vtkMRMLColorTableNode", "Inferno",
                                                 "vtkMRMLColorTableNodeFileInferno.txt")
    assert heatmapColorNode(mrml.scene) is inferno


def test_default_model_is_the_first_installed_classifier(mrml, case, tiny_classifier, work, tmp_path, monkeypatch):
    import CADExtensionLib.models as manager
    from CADClassifyLib.ClassificationLogic import defaultClassificationModel
    from CADExtensionLib.models import ModelManagerLogic

    shipped = [m.id for m in ModelManagerLogic().listModels() if m.task == "classification"]
    if shipped:  # the shipped classifiers come first
        assert defaultClassificationModel() == shipped[0]
    # with no shipped classifier (an empty shipped folder): none until one is imported, then that one
    monkeypatch.setattr(manager, "shippedModelsFolder", lambda: tmp_path / "no-shipped-models")
    monkeypatch.setenv("CAD_MODELS", str(tmp_path / "user-models"))
    with pytest.raises(ValueError, match="no classification model is installed"):
        defaultClassificationModel()
    ModelManagerLogic().importModel(tiny_classifier)
    assert defaultClassificationModel() == "tiny-resnet"
    volume, _, _ = case
    result = ClassificationLogic(runner=InProcessRunner(), temporaryFolder=work).run(volume, heatmap=False)
    assert result.report["model"] == "tiny-resnet"  # the engine found it by id, through the same CAD_MODELS


def test_storage_node_reverses_k_of_a_left_handed_grid_unless_told_not_to(mrml, case, tmp_path):
    """Why the heatmap is read with ``ForceRightHandedIJKCoordinateSystemOff``: by default Slicer's reader turns a
    left-handed IJK grid (like this case's) into a right-handed one by reversing K, voxels and origin alike."""
    import slicer

    volume, _, _ = case
    assert np.linalg.det(np.array(ijkToRASArray(volume))[:3, :3]) < 0
    path = exportVolumeToFile(volume, tmp_path / "left-handed.nrrd")
    voxels = slicer.util.arrayFromVolume(volume)
    readings = {}
    for force in (True, False):
        node = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"force {force}")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetForceRightHandedIJKCoordinateSystem(force)
        assert storage.ReadData(node)
        readings[force] = (np.array(ijkToRASArray(node)), slicer.util.arrayFromVolume(node))
    flipped, kept = readings[True], readings[False]
    assert np.allclose(kept[0], ijkToRASArray(volume), atol=1e-9) and np.array_equal(kept[1], voxels)
    assert np.allclose(flipped[0][:3, 2], -np.array(ijkToRASArray(volume))[:3, 2]) and np.array_equal(
        flipped[1], voxels[::-1])
    assert np.allclose(flipped[0][:3, 3], ras_of(volume, (SHAPE[0] - 1, 0, 0)))  # origin moved to the last slice


def test_run_without_waiting_delivers_the_result_to_on_finished(mrml, case, tiny_classifier, work):
    volume, segmentation, _ = case
    done = threading.Event()
    results: list[tuple] = []

    def onFinished(result, error):
        results.append((result, error))
        done.set()

    logic = ClassificationLogic(runner=InProcessRunner(), temporaryFolder=work)
    assert logic.run(volume, model=str(tiny_classifier), segmentationNode=segmentation, segmentId="lesion",
                     wait=False, onFinished=onFinished) is None
    assert done.wait(120), "the run did not finish"
    ((result, error),) = results
    assert error is None and result.heatmapNode.GetScene() is mrml.scene and result.tableNode.GetScene() is mrml.scene
    assert list(work.iterdir()) == [] and not logic.isRunning()


class CorruptingRunner(InProcessRunner):
    """The real engine, after which the heatmap file is damaged: reading the result must fail half-way."""

    def start(self, argv, env=None, onOutputLine=None, onFinished=None):
        self.heatmapPath = argv[argv.index("--heatmap") + 1]
        super().start(argv, env, onOutputLine, onFinished)

    def wait(self, timeout=None):
        code = super().wait(timeout)
        with open(self.heatmapPath, "wb") as stream:
            stream.write(b"NRRD0004\nthis is not a heatmap\n")
        return code


def test_a_result_that_cannot_be_read_leaves_no_half_made_nodes(mrml, case, tiny_classifier, work):
    volume, segmentation, _ = case
    before = mrml.nodeIds()
    logic = ClassificationLogic(runner=CorruptingRunner(), temporaryFolder=work)
    with pytest.raises(RuntimeError, match="cannot read the heatmap"):
        logic.run(volume, model=str(tiny_classifier), segmentationNode=segmentation, segmentId="lesion")
    assert mrml.nodeIds() == before  # the table node, made first, is removed again with the heatmap node
    assert list(work.iterdir()) == [] and not logic.isRunning()
