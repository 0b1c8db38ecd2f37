"""BatchLogic (``cad batch`` from the CADSegment panel) on real MRML against a real process: the stand-in engine of
``fake_engine.py``, which prints the contract's case, progress and summary lines and writes real outputs.

Checked: the exact argv the engine gets; case and summary lines parsed (also from ids with spaces and errors with
colons); exit 1 with a summary is a finished run, exit 1 without one (a crash) and exit 2 (refused) are failures;
scene volumes exported under safe unique ids and removed afterwards; results loaded voxel for voxel on the right grid,
or nothing loaded; cancel leaves no process, no temporary files and no nodes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CADExtensionLib.process import SubprocessRunner
from CADSegmentLib.BatchLogic import (
    BatchCancelled,
    BatchCase,
    BatchLogic,
    caseIdForName,
    parseCaseLine,
    parseSummaryLine,
)

from .conftest import processAlive
from .fake_engine import LABELS, expected_labels, make_fake_engine, write_case
from .test_segmentation_logic import add_volume, segment_names

OBLIQUE = (0.0, -1.0, 0.0, 0.8, 0.0, 0.6, -0.6, 0.0, 0.8)  # a rotation with a left-handed twist in LPS terms


@pytest.fixture
def engine(tmp_path) -> Path:
    return make_fake_engine(tmp_path / "engine")


@pytest.fixture
def cohort(tmp_path) -> dict[str, sitk.Image]:
    """Two good cases (one oblique, one .nii.gz in a sub-folder), a corrupt file and a 2D image."""
    folder = tmp_path / "cohort"
    (folder / "sub").mkdir(parents=True)
    images = {"case1": write_case(folder / "case1.nrrd", seed=1, direction=OBLIQUE),
              "case2": write_case(folder / "sub" / "case2.nii.gz", size=(9, 11, 7), seed=2)}
    (folder / "broken.nrrd").write_bytes(b"NRRD0004\nthis is not an image\n")
    sitk.WriteImage(sitk.Image(5, 6, sitk.sitkFloat32), str(folder / "flat.nrrd"))
    return images


def logic_for(engine: Path, work: Path, **kwargs) -> BatchLogic:
    return BatchLogic(runner=kwargs.pop("runner", SubprocessRunner()), engineFolder=engine, python=sys.executable,
                      temporaryFolder=work)


@pytest.mark.parametrize(("line", "expected"), [
    ("case case1: ok (1.25 s)", BatchCase("case1", "ok", 1.25)),
    ("case my scan: 2: ok (3 s)\n", BatchCase("my scan: 2", "ok", 3.0)),
    ("case flat: failed: cad segment: error: /d/flat.nrrd: not a 3D image",
     BatchCase("flat", "failed", error="cad segment: error: /d/flat.nrrd: not a 3D image")),
    ("batch:  45%| 00:12", None),
    ("batch: 2 ok, 1 failed, summary /out/summary.csv", None),
    ("warning: case1: field of view 250 mm is far outside the training range", None),
    ("case x: ok", None),
])
def test_case_lines_are_parsed(line, expected):
    assert parseCaseLine(line) == expected


def test_summary_line_is_parsed():
    assert parseSummaryLine("batch: 38 ok, 2 failed, summary /data/out dir/summary.csv") == (
        38, 2, Path("/data/out dir/summary.csv"))
    for line in ("batch:  45%| 00:12", "batch: done", "case a: ok (1 s)", "batch: 1 ok, summary x"):
        assert parseSummaryLine(line) is None


def test_case_ids_for_scene_volumes_are_safe_and_unique():
    assert caseIdForName("MR Head 1.2") == "MR_Head_1_2"
    assert caseIdForName("../x/y") == "x_y"
    assert caseIdForName("äöü") == "volume"
    assert caseIdForName("scan", ["scan", "scan_2"]) == "scan_3"


def test_folder_run_reports_every_case_and_the_summary(mrml, engine, work, cohort, tmp_path, monkeypatch):
    """Exit 1 (some cases failed) after the summary line is a result, not an error; the exact argv; progress."""
    monkeypatch.setenv("FAKE_CAD_ARGV", str(tmp_path / "argv.json"))
    out = tmp_path / "out"
    cases: list[BatchCase] = []
    progress: list[int] = []
    logs: list[str] = []
    finished: list[tuple] = []
    before = mrml.nodeIds()
    logic = logic_for(engine, work)
    result = logic.run(out, model="tiny-unet", inputFolder=tmp_path / "cohort", outputFormat="nrrd", workers=2,
                       device="cpu", resume=True, onCase=cases.append, onProgress=progress.append,
                       onLog=logs.append, onFinished=lambda *args: finished.append(args))

    assert json.loads((tmp_path / "argv.json").read_text()) == [
        "batch", str(tmp_path / "cohort"), "-m", "tiny-unet", "-o", str(out), "--format", "nrrd", "--workers", "2",
        "--resume", "--device", "cpu"]
    assert finished == [(result, None)] and not logic.isRunning()
    assert (result.okCount, result.failedCount, result.summaryPath) == (2, 2, out / "summary.csv")
    assert [(c.id, c.status) for c in cases] == [("broken", "failed"), ("case1", "ok"), ("flat", "failed"),
                                                  ("case2", "ok")]
    assert result.cases == cases
    assert [c.id for c in result.failedCases] == ["broken", "flat"]
    assert result.failedCases[1].error == f"cad segment: error: {tmp_path / 'cohort' / 'flat.nrrd'}: not a 3D image"
    assert progress == sorted(progress) and progress[0] == 0 and progress[-1] == 100
    assert any(line.startswith("case case1: ok (") for line in logs)  # case lines are still logged
    assert not any("%|" in line for line in logs)
    assert result.segmentationNodes == [] and mrml.nodeIds() == before
    assert list(work.iterdir()) == []


def test_folder_run_loads_each_ok_case_on_its_own_grid(mrml, engine, work, cohort, tmp_path):
    import slicer

    out = tmp_path / "out"
    result = logic_for(engine, work).run(out, model="/models/tiny-unet", inputFolder=tmp_path / "cohort",
                                         outputFormat="seg.nrrd", loadResults=True)
    assert (result.okCount, result.failedCount) == (2, 2)
    names = [node.GetName() for node in result.segmentationNodes]
    assert names == ["case1 tiny-unet segmentation", "case2 tiny-unet segmentation"]  # summary.csv's order
    for node, caseId in zip(result.segmentationNodes, ("case1", "case2")):
        assert segment_names(node) == [label["name"] for label in LABELS]
        image = cohort[caseId]
        volume = add_volume(image, f"{caseId} reference")  # the input as Slicer would load it
        expected = expected_labels(image)
        assert (expected == 1).any() and (expected == 2).any()
        segmentation = node.GetSegmentation()
        for index, label in enumerate(LABELS):
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), volume)
            assert np.array_equal(mask > 0, expected == label["value"]), (caseId, label["name"])
    assert not [mrml.scene.GetNthNode(i).GetName() for i in range(mrml.scene.GetNumberOfNodes())
                if mrml.scene.GetNthNode(i).GetName().startswith("__")]  # no temporary reference left
    assert list(work.iterdir()) == []


def test_scene_volumes_are_exported_under_safe_ids_and_loaded_on_their_grid(mrml, engine, work, tmp_path,
                                                                            monkeypatch):
    import slicer

    monkeypatch.setenv("FAKE_CAD_ARGV", str(tmp_path / "argv.json"))
    images = [write_case(tmp_path / f"v{i}.nrrd", seed=i, direction=OBLIQUE if i else None) for i in range(2)]
    volumes = [add_volume(images[0], "MR head.1"), add_volume(images[1], "MR head.1")]
    out = tmp_path / "out"
    result = logic_for(engine, work).run(out, model="tiny-unet", volumeNodes=volumes, fast=True, uncertainty=True,
                                         force=True, loadResults=True)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[0] == "batch" and Path(argv[1]).parent.parent == work  # the run's own temporary folder
    assert argv[2:] == ["-m", "tiny-unet", "-o", str(out), "--format", "nii.gz", "--workers", "1", "--uncertainty",
                        "--fast", "--device", "auto", "--force"]
    assert [c.id for c in result.cases] == ["MR_head_1", "MR_head_1_2"]
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".nii.gz")) == ["MR_head_1.nii.gz",
                                                                                  "MR_head_1_2.nii.gz"]
    for node, volume, image in zip(result.segmentationNodes, volumes, images):
        assert node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) \
            is volume
        expected = expected_labels(image)
        segmentation = node.GetSegmentation()
        for index, label in enumerate(LABELS):
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), volume)
            assert np.array_equal(mask > 0, expected == label["value"])
    assert list(work.iterdir()) == []  # the exported volumes are gone; the outputs stay in the user's folder


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"outputFormat": "dcm", "volumeNodes": "scene"}, "DICOM SEG output needs DICOM series"),
    ({"outputFormat": "dcm", "loadResults": True}, "not loaded here"),
    ({"outputFormat": "png"}, "unknown output format"),
    ({"workers": 0}, "workers must be"),
    ({"resume": True, "force": True}, "give one of them"),
    ({"device": "gpu"}, "unknown device"),
    ({"inputFolder": "/no/such/folder"}, "no such input folder"),
    ({"volumeNodes": []}, "at least one volume"),
    ({"inputFolder": None}, "either an input folder or the scene volumes"),
])
def test_bad_requests_are_refused_before_anything_runs(mrml, engine, work, tmp_path, kwargs, message):
    volume = add_volume(write_case(tmp_path / "v.nrrd"), "v")
    arguments = {"inputFolder": tmp_path, **kwargs}
    if arguments.get("volumeNodes") is not None:
        arguments["inputFolder"] = None
        if arguments["volumeNodes"] == "scene":
            arguments["volumeNodes"] = [volume]
    with pytest.raises(ValueError, match=message):
        logic_for(engine, work).run(tmp_path / "out", **arguments)
    assert list(work.iterdir()) == [] and not (tmp_path / "out").exists()


def test_refused_arguments_raise_the_engine_line(mrml, engine, work, cohort, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CAD_REFUSE", "1")
    before = mrml.nodeIds()
    finished: list[tuple] = []
    with pytest.raises(RuntimeError, match=r"^batch segmentation failed: cad batch: error: .*cohort: no image"):
        logic_for(engine, work).run(tmp_path / "out", inputFolder=tmp_path / "cohort", loadResults=True,
                                    onFinished=lambda *args: finished.append(args))
    assert finished[0][0] is None and finished[0][1].startswith("batch segmentation failed: cad batch: error:")
    assert mrml.nodeIds() == before and list(work.iterdir()) == []


def test_exit_1_without_a_summary_is_a_failure_not_a_result(mrml, engine, work, cohort, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_CAD_CRASH", "1")
    before = mrml.nodeIds()
    with pytest.raises(RuntimeError, match="batch segmentation failed: RuntimeError: worker died"):
        logic_for(engine, work).run(tmp_path / "out", inputFolder=tmp_path / "cohort", loadResults=True)
    assert mrml.nodeIds() == before and list(work.iterdir()) == []


def test_all_ok_exits_0_and_an_unreadable_output_loads_nothing(mrml, engine, work, tmp_path):
    folder = tmp_path / "good"
    folder.mkdir()
    for index in range(3):
        write_case(folder / f"c{index}.nrrd", seed=index)
    out = tmp_path / "out"
    result = logic_for(engine, work).run(out, inputFolder=folder)
    assert (result.okCount, result.failedCount, len(result.cases)) == (3, 0, 3)
    (out / "c2.nii.gz").write_bytes(b"garbage")  # then load from the same summary: all or nothing
    before = mrml.nodeIds()
    logic = logic_for(engine, work)
    with pytest.raises(RuntimeError, match="c2: cannot read the output"):
        logic._importResult(type("Run", (), {"summary": (3, 0, out / "summary.csv"), "cases": result.cases,
                                             "outputFolder": out, "outputFormat": "nii.gz", "model": "m",
                                             "volumes": {}, "loadResults": True})())
    assert mrml.nodeIds() == before


@pytest.mark.parametrize("defer", [False, True], ids=["direct-callbacks", "deferred-callbacks"])
def test_cancel_leaves_no_process_no_files_no_nodes(mrml, engine, work, tmp_path, monkeypatch, defer):
    monkeypatch.setenv("FAKE_CAD_CASE_SECONDS", "30")
    volumes = [add_volume(write_case(tmp_path / f"v{i}.nrrd", seed=i), f"v{i}") for i in range(2)]
    before = mrml.nodeIds()
    runner = SubprocessRunner(deferCallbacks=defer)
    progress: list[int] = []
    finished: list[tuple] = []
    logic = logic_for(engine, work, runner=runner)
    assert logic.run(tmp_path / "out", volumeNodes=volumes, loadResults=True, wait=False, onProgress=progress.append,
                     onFinished=lambda *args: finished.append(args)) is None
    assert len(list(work.iterdir())) == 1  # the workspace with the exported volumes
    deadline = time.monotonic() + 30
    while not progress and time.monotonic() < deadline:  # the engine has started (its 0% line)
        logic.processEvents()
        time.sleep(0.02)
    assert progress == [0] and processAlive(runner.pid)
    assert logic.cancel() is True
    assert not processAlive(runner.pid)
    assert finished == [(None, "cancelled")] and not logic.isRunning()
    assert list(work.iterdir()) == [] and mrml.nodeIds() == before
    assert logic.cancel() is False


def test_blocking_run_cancelled_from_a_case_callback_raises(mrml, engine, work, tmp_path, monkeypatch):
    """cancel() inside onCase (the runner's own callback) must not deadlock waiting for that callback."""
    folder = tmp_path / "two"
    folder.mkdir()
    write_case(folder / "a.nrrd")
    write_case(folder / "b.nrrd", seed=3)
    monkeypatch.setenv("FAKE_CAD_CASE_SECONDS", "2")
    logic = logic_for(engine, work)
    with pytest.raises(BatchCancelled):
        logic.run(tmp_path / "out", inputFolder=folder, onCase=lambda case: logic.cancel())
    assert list(work.iterdir()) == [] and not logic.isRunning()


def test_dicom_seg_is_offered_for_folders_only():
    from CADSegmentLib.BatchLogic import LOADABLE_FORMATS, availableFormats

    assert availableFormats(sceneInput=False) == ("nii.gz", "nrrd", "seg.nrrd", "dcm")
    assert availableFormats(sceneInput=True) == ("nii.gz", "nrrd", "seg.nrrd")
    assert "dcm" not in LOADABLE_FORMATS
