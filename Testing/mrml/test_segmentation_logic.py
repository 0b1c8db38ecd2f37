"""SegmentationLogic end to end on real MRML and a real engine: a shipped hippocampus MR case made oblique and
anisotropic, run in process and as a real subprocess; failures; cancel leaving nothing behind."""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CADExtensionLib.process import SubprocessRunner
from CADExtensionLib.volumes import exportVolumeToFile, ijkToRASArray
from CADSegmentLib import InProcessRunner, SegmentationCancelled, SegmentationLogic

from conftest import TINY_LABELS, make_tiny_segmentation_package

from .conftest import REPO, processAlive
from .test_geometry import rotation

# hippocampus_040 is in the shipped model's validation split (never trained on); its Dice on its own grid is 0.93/0.92.
CASE = REPO / "sample_data" / "hippocampus" / "imagesTr" / "hippocampus_040.nii.gz"
TRUTH = REPO / "sample_data" / "hippocampus" / "labelsTr" / "hippocampus_040.nii.gz"
SHIPPED_CARD = REPO / "CADExtension" / "cadcore" / "models" / "hippocampus-unet" / "model.json"
SPACING = (1.0, 0.8, 1.5)
RUNNERS = {"in-process": InProcessRunner, "subprocess": SubprocessRunner}


@functools.lru_cache(maxsize=1)
def oblique_case() -> tuple[sitk.Image, sitk.Image]:
    """The case and its labels rotated 20° about an oblique axis (about the image centre) and resampled to
    (1.0, 0.8, 1.5) mm: linear for the image, nearest neighbour for the labels."""
    image, labels = sitk.ReadImage(str(CASE), sitk.sitkFloat32), sitk.ReadImage(str(TRUTH))
    size = np.array(image.GetSize())
    old_spacing = np.array(image.GetSpacing())
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    direction = rotation(20, (1, 2, 3)) @ np.reshape(image.GetDirection(), (3, 3))
    new_size = np.ceil(size * old_spacing / np.array(SPACING)).astype(int)
    origin = centre - direction @ (np.array(SPACING) * (new_size - 1) / 2)
    rotated = []
    for source, interpolator in ((image, sitk.sitkLinear), (labels, sitk.sitkNearestNeighbor)):
        placed = sitk.Image(source)
        placed.SetDirection(direction.ravel())  # the same voxels, scanned at an oblique angle
        placed.SetOrigin(centre - direction @ (old_spacing * (size - 1) / 2))
        rotated.append(sitk.Resample(placed, new_size.tolist(), sitk.Transform(), interpolator, origin.tolist(),
                                     SPACING, direction.ravel().tolist(), 0, source.GetPixelID()))
    return rotated[0], rotated[1]


def add_volume(image: sitk.Image, name: str):
    """A volume node whose IJKToRAS is the SimpleITK geometry converted LPS → RAS (direction rows and origin)."""
    import slicer

    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return slicer.util.addVolumeFromArray(sitk.GetArrayFromImage(image), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, name)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """The shared tiny random model, working at 2 mm so each run costs little more than the engine's start-up."""
    preprocessing = {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0],
                     "normalization": {"kind": "mr", "percentiles": [0.5, 99.5]}}
    return make_tiny_segmentation_package(tmp_path_factory.mktemp("models") / "tiny-unet",
                                          preprocessing=preprocessing).folder


def segment_names(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
            for i in range(segmentation.GetNumberOfSegments())]


def assert_geometry_matches(node, volume) -> None:
    import slicer

    assert node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is volume
    numbers = node.GetSegmentation().GetConversionParameter("Reference image geometry").split(";")
    assert np.allclose(np.reshape([float(v) for v in numbers[:16]], (4, 4)), ijkToRASArray(volume), atol=1e-6)
    dimensions = volume.GetImageData().GetDimensions()
    assert [int(v) for v in numbers[16:22]] == [0, dimensions[0] - 1, 0, dimensions[1] - 1, 0, dimensions[2] - 1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


@pytest.mark.parametrize("runner_name", sorted(RUNNERS))
def test_run_imports_the_engine_result_exactly(mrml, tiny_model, work, tmp_path, runner_name):
    """Tiny random model: the plumbing. The segments must equal, voxel for voxel, what the engine writes for the
    same exported volume, on an oblique anisotropic grid, with the card's names and colours."""
    import slicer

    from cadcore.cli import main

    volume = add_volume(oblique_case()[0], "hippocampus_040")
    progress: list[int] = []
    logs: list[str] = []
    finished: list[tuple] = []
    before = mrml.nodeIds()
    logic = SegmentationLogic(runner=RUNNERS[runner_name](), temporaryFolder=work)
    node = logic.run(volume, model=str(tiny_model), device="cpu", onProgress=progress.append, onLog=logs.append,
                     onFinished=lambda *args: finished.append(args))

    assert finished == [(node, None)] and not logic.isRunning()
    assert mrml.nodeIds() - before == {node.GetID(), node.GetDisplayNode().GetID()}
    assert list(work.iterdir()) == []  # the exported volume and engine outputs are gone
    assert node.GetName() == "hippocampus_040 tiny-unet segmentation"
    assert segment_names(node) == [label["name"] for label in TINY_LABELS]
    segmentation = node.GetSegmentation()
    for index, label in enumerate(TINY_LABELS):
        assert np.allclose(segmentation.GetSegment(segmentation.GetNthSegmentID(index)).GetColor(), label["color"])
    assert_geometry_matches(node, volume)
    assert progress and progress[-1] == 100 and progress == sorted(progress)
    assert any(line.startswith("segmentation:") for line in logs)

    exported = exportVolumeToFile(volume, tmp_path / "direct_input.nrrd")
    assert main(["segment", str(exported), "-m", str(tiny_model), "-o", str(tmp_path / "direct.nii.gz"),
                 "--device", "cpu"]) == 0
    direct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "direct.nii.gz")))
    assert (direct > 0).any() and (direct == 0).any()  # a comparison of two empty masks would prove nothing
    for index, label in enumerate(TINY_LABELS):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), volume)
        assert np.array_equal(mask > 0, direct == label["value"]), label["name"]


def test_run_without_waiting_imports_on_completion_into_a_given_node(mrml, tiny_model, work):
    volume = add_volume(oblique_case()[0], "case")
    target = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "target")
    target.CreateDefaultDisplayNodes()
    target.GetSegmentation().AddEmptySegment("", TINY_LABELS[0]["name"])
    done = threading.Event()
    results: list[tuple] = []

    def onFinished(node, error):
        results.append((node, error))
        done.set()

    logic = SegmentationLogic(runner=InProcessRunner(), temporaryFolder=work)
    assert logic.run(volume, model=str(tiny_model), outputSegmentationNode=target, wait=False,
                     onFinished=onFinished) is None
    assert done.wait(120), "the run did not finish"
    assert results == [(target, None)]
    assert segment_names(target) == [TINY_LABELS[0]["name"], f"{TINY_LABELS[0]['name']} (2)", TINY_LABELS[1]["name"]]
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("runner_name", sorted(RUNNERS))
def test_engine_failure_raises_its_one_line_error(mrml, work, tmp_path, runner_name):
    volume = add_volume(oblique_case()[0], "case")
    before = mrml.nodeIds()
    logic = SegmentationLogic(runner=RUNNERS[runner_name](), temporaryFolder=work)
    with pytest.raises(RuntimeError, match=r"cad segment: error: .*no-such-model.*unknown model"):
        logic.run(volume, model=str(tmp_path / "no-such-model"))
    assert mrml.nodeIds() == before and list(work.iterdir()) == [] and not logic.isRunning()


SLOW = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(f"pids {child.pid}", flush=True)
time.sleep(60)
"""


class SlowRunner(SubprocessRunner):
    """The real runner, made to run a slow stand-in for the engine (with a grandchild) instead of ``cad segment``."""

    def start(self, argv, env=None, onOutputLine=None, onFinished=None):
        self.engineArgv = list(argv)
        super().start([sys.executable, "-c", SLOW], env, onOutputLine, onFinished)


def _wait_for(predicate, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert predicate(), "timed out"


@pytest.mark.parametrize("defer", [False, True], ids=["direct-callbacks", "deferred-callbacks"])
def test_cancel_leaves_no_process_no_files_no_nodes(mrml, work, defer):
    volume = add_volume(oblique_case()[0], "case")
    before = mrml.nodeIds()
    runner = SlowRunner(deferCallbacks=defer)
    logs: list[str] = []
    results: list[tuple] = []
    logic = SegmentationLogic(runner=runner, temporaryFolder=work)
    logic.run(volume, model="hippocampus-unet", wait=False, onLog=logs.append,
              onFinished=lambda *args: results.append(args))
    assert runner.engineArgv[1:4] == ["-m", "cadcore", "segment"]
    assert len(list(work.iterdir())) == 1  # the run's workspace, holding the exported volume
    _wait_for(lambda: logic.processEvents() >= 0 and bool(logs))
    child = int(logs[0].split()[1])
    assert processAlive(runner.pid) and processAlive(child)

    assert logic.cancel() is True
    _wait_for(lambda: not processAlive(child), 5)  # the orphaned grandchild is reaped by init
    assert not processAlive(runner.pid)
    assert list(work.iterdir()) == []
    assert mrml.nodeIds() == before
    assert results == [(None, "cancelled")] and not logic.isRunning()
    assert logic.cancel() is False


def test_default_runner_defers_callbacks_only_inside_the_application(mrml, fakeSlicerApp, monkeypatch):
    assert SegmentationLogic().runner.deferCallbacks is True  # slicer.app exists: MRML only on the main thread
    monkeypatch.delattr("slicer.app")
    assert SegmentationLogic().runner.deferCallbacks is False


def test_cancel_from_another_thread_stops_a_blocking_run(mrml, work):
    volume = add_volume(oblique_case()[0], "case")
    before = mrml.nodeIds()
    logic = SegmentationLogic(runner=SlowRunner(), temporaryFolder=work)
    lines: list[str] = []

    def onLog(line: str) -> None:
        lines.append(line)
        threading.Thread(target=logic.cancel).start()

    with pytest.raises(SegmentationCancelled):
        logic.run(volume, model="hippocampus-unet", onLog=onLog)
    assert lines and list(work.iterdir()) == [] and mrml.nodeIds() == before
    _wait_for(lambda: not processAlive(int(lines[0].split()[1])), 5)


def test_interrupted_blocking_run_stops_the_engine_and_cleans_up(mrml, work):
    class InterruptedRunner(SlowRunner):
        interrupted = False

        def wait(self, timeout=None):
            if not self.interrupted:
                self.interrupted = True
                _wait_for(lambda: bool(lines))
                raise KeyboardInterrupt
            return super().wait(timeout)

    volume = add_volume(oblique_case()[0], "case")
    before = mrml.nodeIds()
    lines: list[str] = []
    runner = InterruptedRunner()
    logic = SegmentationLogic(runner=runner, temporaryFolder=work)
    with pytest.raises(KeyboardInterrupt):
        logic.run(volume, onLog=lines.append)
    assert not processAlive(runner.pid) and list(work.iterdir()) == [] and mrml.nodeIds() == before
    assert not logic.isRunning()
    _wait_for(lambda: not processAlive(int(lines[0].split()[1])), 5)


@pytest.mark.parametrize("runner_name", sorted(RUNNERS))
def test_shipped_model_segments_the_oblique_case(mrml, work, runner_name):
    """The trained model: segment names and colours from the shipped card, Dice ≥ 0.85 per label against the
    identically transformed ground truth, reference geometry equal to the volume's."""
    if not SHIPPED_CARD.is_file():
        pytest.skip(f"the trained model is not shipped yet ({SHIPPED_CARD.relative_to(REPO)} does not exist)")
    import slicer

    card = json.loads(SHIPPED_CARD.read_text())
    image, truth = oblique_case()
    volume = add_volume(image, "hippocampus_040")
    logic = SegmentationLogic(runner=RUNNERS[runner_name](), temporaryFolder=work)
    node = logic.run(volume, model="hippocampus-unet", device="cpu")
    labels = [label for label in card["labels"] if int(label["value"]) != 0]
    assert segment_names(node) == [label["name"] for label in labels]
    truth_array = sitk.GetArrayFromImage(truth)
    segmentation = node.GetSegmentation()
    for index, label in enumerate(labels):
        segment_id = segmentation.GetNthSegmentID(index)
        assert np.allclose(segmentation.GetSegment(segment_id).GetColor(), label["color"])
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume) > 0
        score = dice(mask, truth_array == int(label["value"]))
        assert score >= 0.85, f"{label['name']}: Dice {score:.3f}"
    assert_geometry_matches(node, volume)
    assert list(work.iterdir()) == []
