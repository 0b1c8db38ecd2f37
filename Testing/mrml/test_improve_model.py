"""Improve model on real MRML: (volume, segmentation) pairs exported on each volume's exact grid with label values by
segment name, the ``cad train --init`` argv, a run that registers the new model (a stand-in engine process and the
real engine), cancel, and the errors a user can make (unknown segment name, fewer than two pairs, existing id)."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CADExtensionLib.command import trainArgv
from CADExtensionLib.models import ModelManagerLogic
from CADExtensionLib.process import SubprocessRunner
from CADExtensionLib.volumes import volumeGeometry
from CADSegmentLib import ImproveModelCancelled, ImproveModelLogic
from CADSegmentLib.ImproveModelLogic import parentSettings, suggestModelId
from CADSegmentLib.TrainingData import checkPairs, exportPairs, modelLabels

from conftest import TINY_LABELS

from .conftest import processAlive
from .test_geometry import oblique_ijk_to_ras
from .test_segmentation_logic import SLOW, _wait_for

SHAPE = (14, 18, 16)  # (K, J, I)
SPACING = (1.0, 0.8, 1.5)

def masks(seed: int) -> dict[str, np.ndarray]:
    """Two non-overlapping boxes, one per label, placed differently per case."""
    shift = seed % 3
    anterior = np.zeros(SHAPE, np.uint8)
    anterior[2 + shift:6 + shift, 4:11, 3:10] = 1
    posterior = np.zeros(SHAPE, np.uint8)
    posterior[8:12, 5 + shift:12 + shift, 6:13] = 1
    return {"anterior": anterior, "posterior": posterior}


def add_pair(mrml, name: str, seed: int, names: tuple[str, ...] = ("  Posterior", "anterior")):
    """An oblique, anisotropic volume and a segmentation whose segments are drawn on the volume's grid, listed in
    the *opposite* order of the model's labels and with different case/spacing in one name."""
    import slicer

    rng = np.random.default_rng(seed)
    voxels = rng.normal(100, 20, size=SHAPE).astype(np.float32)
    origin = (100.0 + seed, 50.0, -40.0)
    volume = slicer.util.addVolumeFromArray(voxels, oblique_ijk_to_ras(spacing=SPACING, origin=origin), name)
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for segmentName in names:
        segmentId = segmentation.GetSegmentation().AddEmptySegment("", segmentName)
        mask = masks(seed).get(segmentName.strip().lower())
        if mask is not None:
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segmentId, volume)
    return volume, segmentation


def expected_labels(seed: int) -> np.ndarray:
    found = masks(seed)
    return (found["anterior"] * 1 + found["posterior"] * 2).astype(np.uint8)


def geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_pairs_are_exported_on_the_volume_grid_with_values_by_segment_name(mrml, tmp_path):
    import slicer

    pairs = [add_pair(mrml, f"case {i}", i) for i in range(2)]
    before = mrml.nodeIds()
    values = checkPairs(pairs, modelLabels({"labels": TINY_LABELS}), "tiny-unet")
    entries = exportPairs(pairs, values, tmp_path)
    assert mrml.nodeIds() == before  # the temporary labelmaps and their display nodes are gone
    assert entries == [{"image": "images/001_case_0.nrrd", "label": "labels/001_case_0.nrrd"},
                       {"image": "images/002_case_1.nrrd", "label": "labels/002_case_1.nrrd"}]
    for seed, ((volume, _segmentation), entry) in enumerate(zip(pairs, entries)):
        image = sitk.ReadImage(str(tmp_path / entry["image"]))
        label = sitk.ReadImage(str(tmp_path / entry["label"]))
        assert geometry(label) == geometry(image)  # bit for bit: the same matrix written twice
        expected = volumeGeometry(volume)
        assert label.GetSize() == expected.size == (SHAPE[2], SHAPE[1], SHAPE[0])
        assert np.allclose(label.GetSpacing(), SPACING, atol=1e-9)
        assert np.allclose(label.GetOrigin(), expected.origin, atol=1e-9)
        assert np.allclose(label.GetDirection(), expected.direction, atol=1e-9)
        assert np.array_equal(sitk.GetArrayFromImage(label), expected_labels(seed))  # 1 = anterior, 2 = posterior
        assert np.array_equal(sitk.GetArrayFromImage(image), slicer.util.arrayFromVolume(volume))


def test_segments_on_another_grid_are_resampled_onto_the_volume_grid(mrml, tmp_path):
    """Segments drawn on a coarser, axis-aligned grid: the labelmap still has the volume's exact geometry, with the
    voxels Slicer's own resampling gives on that grid."""
    import slicer

    volume, _ = add_pair(mrml, "fine", 0)
    bounds = np.zeros(6)
    volume.GetRASBounds(bounds)
    coarse = slicer.util.addVolumeFromArray(np.zeros((12, 14, 14), np.float32), np.array(
        [[-2.0, 0, 0, bounds[1]], [0, -2.0, 0, bounds[3]], [0, 0, 2.5, bounds[4]], [0, 0, 0, 1]]), "coarse")
    segmentation = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn elsewhere")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(coarse)
    ids = {name: segmentation.GetSegmentation().AddEmptySegment("", name) for name in ("anterior", "posterior")}
    block = np.zeros((12, 14, 14), np.uint8)
    block[3:9, 4:10, 4:10] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(block, segmentation, ids["anterior"], coarse)
    values = checkPairs([(volume, segmentation), (coarse, segmentation)], modelLabels({"labels": TINY_LABELS}))
    entry = exportPairs([(volume, segmentation)], values[:1], tmp_path)[0]
    label = sitk.ReadImage(str(tmp_path / entry["label"]))
    assert geometry(label) == geometry(sitk.ReadImage(str(tmp_path / entry["image"])))
    resampled = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, ids["anterior"], volume) > 0
    assert resampled.any() and not resampled.all()
    assert np.array_equal(sitk.GetArrayFromImage(label), resampled.astype(np.uint8))


@pytest.mark.parametrize(("names", "message"), [
    (("anterior", "posterior", "Segment_1"), r"'Segment_1' match no label of model 'tiny-unet'; rename each to one "
                                             r"of the model's labels \('anterior', 'posterior'\)"),
    (("anterior",), r"has no segment named 'posterior'.*add an empty segment of that name"),
])
def test_segment_names_must_be_the_models_labels(mrml, folders, names, message):
    pairs = [add_pair(mrml, "case 0", 0), add_pair(mrml, "case 1", 1, names)]
    before = mrml.nodeIds()
    logic = ImproveModelLogic(runner=RecordingRunner(), temporaryFolder=folders["work"], modelsFolder=folders["user"],
                              shippedFolder=folders["shipped"])
    with pytest.raises(ValueError, match=message):
        logic.run("tiny-unet", pairs=pairs)
    assert mrml.nodeIds() == before and list(folders["work"].iterdir()) == [] and not logic.isRunning()


def test_fewer_than_two_pairs_overlaps_and_duplicates_are_refused(mrml, folders):
    import slicer

    logic = ImproveModelLogic(runner=RecordingRunner(), temporaryFolder=folders["work"], modelsFolder=folders["user"],
                              shippedFolder=folders["shipped"])
    pair = add_pair(mrml, "case 0", 0)
    with pytest.raises(ValueError, match=r"at least 2 \(volume, segmentation\) pairs, one of them to validate on; 1"):
        logic.run("tiny-unet", pairs=[pair])
    with pytest.raises(ValueError, match="listed twice"):
        logic.run("tiny-unet", pairs=[pair, pair])
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        logic.run("tiny-unet", pairs=[pair, add_pair(mrml, "case 2", 2)], epochs=0)
    overlapping = add_pair(mrml, "case 1", 1)
    segmentation = overlapping[1].GetSegmentation()
    posterior = next(segmentation.GetNthSegmentID(i) for i in range(2)
                     if segmentation.GetNthSegment(i).GetName().strip() == "Posterior")
    slicer.util.updateSegmentBinaryLabelmapFromArray(masks(1)["anterior"], overlapping[1], posterior, overlapping[0])
    with pytest.raises(ValueError, match=r"segments '  Posterior' and 'anterior' overlap in \d+ voxels"):
        logic.run("tiny-unet", pairs=[pair, overlapping])
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        logic.run("no-such-model", pairs=[pair, overlapping])
    assert list(folders["work"].iterdir()) == [] and not logic.isRunning()


def test_train_argv_exact_and_accepted_by_the_engine():
    argv = trainArgv(Path("/py"), Path("/w/data/dataset.json"), Path("/w/new-model"), Path("/m/tiny-unet"),
                     "new-model", epochs=30, device="cpu", labelsPath=Path("/w/data/labels.json"),
                     freezeEncoderEpochs=5, spacing=[2, 2.5, 3.0], patchSize=[16, 16, 32.0], modality="mr",
                     valEvery=2, description="-tiny fine-tuned")
    assert argv == [
        "/py", "-m", "cadcore", "train", "--data", "/w/data/dataset.json", "-o", "/w/new-model",
        "--init", "/m/tiny-unet", "--id", "new-model", "--epochs", "30", "--device", "cpu", "--val-every", "2",
        "--labels", "/w/data/labels.json", "--freeze-encoder-epochs", "5", "--spacing=2.0,2.5,3.0",
        "--patch-size=16,16,32", "--modality", "MR", "--description=-tiny fine-tuned",
    ]
    from cadcore.cli.parser import build_parser

    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.data, args.output, args.init, args.model_id, args.epochs, args.device) == (
        "train", "/w/data/dataset.json", "/w/new-model", "/m/tiny-unet", "new-model", 30, "cpu")
    assert (args.val_every, args.labels, args.freeze_encoder_epochs, args.spacing, args.patch_size) == (
        2, "/w/data/labels.json", 5, [2.0, 2.5, 3.0], [16, 16, 32])
    assert (args.modality, args.description, args.force, args.resume) == ("MR", "-tiny fine-tuned", False, False)
    assert trainArgv("py", "d", "o", "m", "n") == ["py", "-m", "cadcore", "train", "--data", "d", "-o", "o",
                                                    "--init", "m", "--id", "n", "--epochs", "50", "--device", "auto"]
    cascade = trainArgv("py", "d", "o", "m", "n", cascadeMarginMm=7)
    assert cascade[-3:] == ["--cascade", "--roi-margin", "7.0"]
    args = build_parser().parse_args(cascade[3:])
    assert args.cascade and args.roi_margin == 7.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"device": "gpu"}, "unknown device"), ({"epochs": 0}, "epochs must be"), ({"epochs": 2.5}, "epochs must be"),
    ({"freezeEncoderEpochs": -1}, "freezeEncoderEpochs"), ({"valEvery": 0}, "valEvery"),
    ({"spacing": [1, 1]}, "3 numbers"), ({"spacing": [1, 0, 1]}, "positive"), ({"patchSize": [16, 16, 16.5]}, "whole"),
    ({"modality": "PET"}, "MR, CT or ANY"), ({"modelId": " "}, "needs an id"),
    ({"cascadeMarginMm": -1}, "cascadeMarginMm must be >= 0"), ({"cascadeMarginMm": "10"}, "numbers"),
])
def test_train_argv_refuses_bad_values(kwargs, message):
    arguments = {"python": "py", "dataPath": "d", "outputPath": "o", "initModel": "m", "modelId": "n", **kwargs}
    with pytest.raises(ValueError, match=message):
        trainArgv(**arguments)


def test_parent_settings_keep_resolution_window_and_normalisation():
    card = {"modality": "CT", "preprocessing": {"spacing": [1.5, 1.5, 3], "normalization": {"kind": "ct"}},
            "inference": {"patch_size": [96, 96, 64]}}
    assert parentSettings(card) == {"spacing": [1.5, 1.5, 3], "patchSize": [96, 96, 64], "modality": "CT"}
    assert parentSettings({"modality": "MR", "preprocessing": {"spacing": None}}) == {
        "spacing": None, "patchSize": None, "modality": "MR"}
    assert parentSettings({"modality": "PET"})["modality"] is None
    assert parentSettings({**card, "cascade": {"margin_mm": 6, "coarse": {}}})["cascadeMarginMm"] == 6.0
    assert "cascadeMarginMm" not in parentSettings(card)


FAKE_TRAIN = r"""
import hashlib, json, sys, time
from pathlib import Path
args = sys.argv[1:]
value = lambda flag: args[args.index(flag) + 1]
if "fail" in value("--id"):
    print("cad train: error: " + value("--data") + ": label values [7] are not in the model's label set", flush=True)
    sys.exit(2)
for stage in ("loading training cases", "loading validation cases"):
    for percent in (0, 50, 100):
        sys.stdout.write(f"\r{stage}: {percent:3d}%|#   | {percent // 50}/2 [00:00<00:00]"); sys.stdout.flush()
    print()
epochs = int(value("--epochs"))
for epoch in range(epochs + 1):
    postfix = ", loss=0.5, val_dice=0.7, best=0.7" if epoch else ""
    sys.stdout.write(f"\rtraining: {100 * epoch // epochs:3d}%|##  | {epoch}/{epochs} [00:01<00:01{postfix}]")
    sys.stdout.flush()
print()
output = Path(value("-o"))
(output / "training").mkdir(parents=True)
(output / "training" / "last.pt").write_bytes(b"checkpoint")
weights = b"fake weights"
card = {"format_version": 1, "id": value("--id"), "version": "1.0.0", "task": "segmentation",
        "network": {"name": "DynUNet", "params": {}}, "labels": json.loads(Path(value("--labels")).read_text()),
        "weights": {"file": "model.safetensors", "sha256": hashlib.sha256(weights).hexdigest()},
        "metrics": {"validation_dice_working_space": 0.7}}
(output / "model.safetensors").write_bytes(weights)
(output / "model.json").write_text(json.dumps(card))
(output / "training_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
(output / "training_log.csv").write_text("epoch,loss\n1,0.5\n")
print(f"model package written to {output}")
"""


class RecordingRunner(SubprocessRunner):
    """The real runner running a stand-in for ``cad train`` (``FAKE_TRAIN``, or ``SLOW`` to be cancelled); it keeps
    the engine argv and the dataset/labels files the logic wrote, read when the process starts."""

    def __init__(self, script: str = FAKE_TRAIN, **kwargs) -> None:
        super().__init__(**kwargs)
        self.script = script
        self.engineArgv: list[str] = []
        self.dataset: dict = {}
        self.labels: list = []

    def start(self, argv, env=None, onOutputLine=None, onFinished=None):
        self.engineArgv, self.env = list(argv), dict(env or {})
        self.dataset = json.loads(Path(argv[argv.index("--data") + 1]).read_text())
        self.labels = json.loads(Path(argv[argv.index("--labels") + 1]).read_text())
        super().start([sys.executable, "-c", self.script, *argv[3:]], env, onOutputLine, onFinished)


def test_run_registers_the_new_model_and_removes_the_workspace(mrml, folders):
    pairs = [add_pair(mrml, f"case {i}", i) for i in range(3)]
    before = mrml.nodeIds()
    runner = RecordingRunner()
    progress, logs, finished = [], [], []
    logic = ImproveModelLogic(runner=runner, temporaryFolder=folders["work"], modelsFolder=folders["user"],
                              shippedFolder=folders["shipped"], python="/opt/Slicer/bin/PythonSlicer")
    result = logic.run("tiny-unet", pairs=pairs, epochs=4, device="cpu", onProgress=progress.append,
                       onLog=logs.append, onFinished=lambda *args: finished.append(args))

    assert finished == [(result, None)] and not logic.isRunning()
    assert result.modelId == "tiny-unet-finetuned" and result.parentId == "tiny-unet"
    assert result.folder == folders["user"] / "tiny-unet-finetuned" and result.validationDice == 0.7
    assert result.curvesPath == result.folder / "training_curves.png" and result.curvesPath.is_file()
    assert sorted(p.name for p in result.folder.iterdir()) == [
        "model.json", "model.safetensors", "training_curves.png", "training_log.csv"]  # no checkpoints kept
    listed = {entry.id: entry for entry in ModelManagerLogic(folders["user"], folders["shipped"]).listModels()}
    assert listed["tiny-unet-finetuned"].labels == {"1": "anterior", "2": "posterior"}
    assert result.entry == listed["tiny-unet-finetuned"]  # the registry's summary of the new model
    assert ModelManagerLogic(folders["user"], folders["shipped"]).verifyModel("tiny-unet-finetuned")
    assert list(folders["work"].iterdir()) == [] and mrml.nodeIds() == before

    argv = runner.engineArgv
    workspace = Path(argv[argv.index("-o") + 1]).parent
    assert argv[:4] == ["/opt/Slicer/bin/PythonSlicer", "-m", "cadcore", "train"]
    assert argv[4:] == trainArgv("x", workspace / "data" / "dataset.json", workspace / "tiny-unet-finetuned",
                                 folders["user"] / "tiny-unet", "tiny-unet-finetuned", epochs=4, device="cpu",
                                 labelsPath=workspace / "data" / "labels.json", valEvery=1,
                                 spacing=[2.0, 2.0, 2.0], patchSize=[16, 16, 16], modality="MR",
                                 description="tiny-unet fine-tuned on 3 cases in 3D Slicer")[4:]
    assert runner.env["CAD_MODELS"] == str(folders["user"])
    assert runner.dataset["labels"] == {"0": "background", "1": "anterior", "2": "posterior"}
    assert [entry["image"] for entry in runner.dataset["training"]] == ["images/001_case_0.nrrd",
                                                                        "images/002_case_1.nrrd"]
    assert runner.dataset["validation"] == [{"image": "images/003_case_2.nrrd", "label": "labels/003_case_2.nrrd"}]
    assert runner.labels == TINY_LABELS  # names, colours (and terminology) carried into the new card

    assert progress == sorted(progress) and progress[0] == 0 and progress[-1] == 100 and 10 in progress
    assert [line for line in logs if line.startswith("epoch")] == [
        f"epoch {n}/4: loss 0.5, validation Dice 0.7 (best 0.7)" for n in range(1, 5)]
    assert not any("%|" in line for line in logs)  # progress redraws never reach the log


def test_existing_ids_are_refused_unless_replacing_is_asked(mrml, folders):
    pairs = [add_pair(mrml, f"case {i}", i) for i in range(2)]
    copy = folders["user"] / "taken"
    shutil.copytree(folders["user"] / "tiny-unet", copy)
    card = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**card, "id": "taken"}))
    shutil.copytree(copy, folders["shipped"] / "shipped-one")
    card["id"] = "shipped-one"
    (folders["shipped"] / "shipped-one" / "model.json").write_text(json.dumps(card))
    logic = ImproveModelLogic(runner=RecordingRunner(), temporaryFolder=folders["work"], modelsFolder=folders["user"],
                              shippedFolder=folders["shipped"])
    with pytest.raises(ValueError, match="a model named 'taken' already exists"):
        logic.run("tiny-unet", pairs=pairs, newModelId="taken")
    with pytest.raises(ValueError, match="shipped with the extension"):
        logic.run("tiny-unet", pairs=pairs, newModelId="shipped-one", overwrite=True)
    with pytest.raises(ValueError, match="cannot name a model"):
        logic.run("tiny-unet", pairs=pairs, newModelId="../escape")
    result = logic.run("tiny-unet", pairs=pairs, newModelId="taken", overwrite=True, epochs=1)
    assert result.folder == copy and json.loads((copy / "model.json").read_text())["weights"]["sha256"] != \
        card["weights"]["sha256"]
    assert suggestModelId("tiny-unet", ["tiny-unet-finetuned", "tiny-unet-finetuned-2"]) == "tiny-unet-finetuned-3"
    assert logic.suggestModelId("tiny-unet") == "tiny-unet-finetuned"


def test_engine_failure_registers_nothing(mrml, folders):
    pairs = [add_pair(mrml, f"case {i}", i) for i in range(2)]
    logic = ImproveModelLogic(runner=RecordingRunner(), temporaryFolder=folders["work"], modelsFolder=folders["user"],
                              shippedFolder=folders["shipped"])
    with pytest.raises(RuntimeError, match=r"fine-tuning failed: cad train: error: .*dataset.json: label values"):
        logic.run("tiny-unet", pairs=pairs, newModelId="will-fail")
    assert sorted(p.name for p in folders["user"].iterdir()) == ["tiny-unet"]
    assert list(folders["work"].iterdir()) == [] and not logic.isRunning()


@pytest.mark.parametrize("defer", [False, True], ids=["direct-callbacks", "deferred-callbacks"])
def test_cancel_kills_the_engine_and_registers_nothing(mrml, folders, defer):
    pairs = [add_pair(mrml, f"case {i}", i) for i in range(2)]
    before = mrml.nodeIds()
    runner = RecordingRunner(SLOW, deferCallbacks=defer)
    logs, results = [], []
    logic = ImproveModelLogic(runner=runner, temporaryFolder=folders["work"], modelsFolder=folders["user"],
                              shippedFolder=folders["shipped"])
    assert logic.run("tiny-unet", pairs=pairs, wait=False, onLog=logs.append,
                     onFinished=lambda *args: results.append(args)) is None
    assert logic.isRunning() and len(list(folders["work"].iterdir())) == 1  # the workspace with the exported data
    _wait_for(lambda: logic.processEvents() >= 0 and bool(logs))
    child = int(logs[0].split()[1])
    assert processAlive(runner.pid) and processAlive(child)

    assert logic.cancel() is True
    _wait_for(lambda: not processAlive(child), 5)
    assert not processAlive(runner.pid)
    assert results == [(None, "cancelled")] and not logic.isRunning() and logic.cancel() is False
    assert list(folders["work"].iterdir()) == [] and mrml.nodeIds() == before
    assert sorted(p.name for p in folders["user"].iterdir()) == ["tiny-unet"]


def test_cancel_from_another_thread_stops_a_blocking_run(mrml, folders):
    pairs = [add_pair(mrml, f"case {i}", i) for i in range(2)]
    logic = ImproveModelLogic(runner=RecordingRunner(SLOW), temporaryFolder=folders["work"],
                              modelsFolder=folders["user"], shippedFolder=folders["shipped"])
    with pytest.raises(ImproveModelCancelled):
        logic.run("tiny-unet", pairs=pairs, onLog=lambda line: threading.Thread(target=logic.cancel).start())
    assert list(folders["work"].iterdir()) == [] and sorted(p.name for p in folders["user"].iterdir()) == ["tiny-unet"]
