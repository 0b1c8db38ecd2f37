"""Improve model with the real engine: a folder or ``dataset.json`` of training cases, the panel's progress and
status read from real tqdm bars, and real fine-tuning runs (a single-stage model and a cascade, stage by stage) that
register the new model. Split from ``test_improve_model.py``, which covers the pairs, the argv and the run's
bookkeeping with a stand-in engine."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CADExtensionLib.models import ModelManagerLogic
from CADExtensionLib.process import LineSplitter
from CADSegmentLib import ImproveModelLogic, InProcessRunner
from CADSegmentLib.ImproveModelLogic import trainingProgress, trainingStatus
from CADSegmentLib.TrainingData import folderDataset, modelLabels, validationCount

from conftest import TINY_LABELS, make_tiny_segmentation_package

from .conftest import PREPROCESSING
from .test_improve_model import SHAPE, RecordingRunner, add_pair, expected_labels


def write_case_files(folder: Path, names: list[str]) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for index, name in enumerate(names):
        image = sitk.GetImageFromArray(np.zeros(SHAPE, np.float32))
        sitk.WriteImage(image, str(folder / "images" / f"{name}_0000.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(expected_labels(index)), str(folder / "labels" / f"{name}.nii.gz"))


def test_folder_of_images_and_labels_or_a_dataset_json(mrml, folders, tmp_path):
    labels = modelLabels({"labels": TINY_LABELS})
    data = tmp_path / "data"
    write_case_files(data, ["a", "b", "c", "d", "e", "f"])
    training, validation = folderDataset(data, labels)
    assert [Path(entry["image"]).name for entry in training] == [f"{n}_0000.nii.gz" for n in "abcde"]
    assert validation == [{"image": str(data / "images" / "f_0000.nii.gz"), "label": str(data / "labels" / "f.nii.gz")}]
    assert validationCount(2) == 1 and validationCount(10) == 2

    spec = {"labels": {"0": "background", "1": "Anterior", "2": "posterior"},
            "training": [{"image": "images/a_0000.nii.gz", "label": "labels/a.nii.gz"}],
            "validation": [{"image": "images/b_0000.nii.gz", "label": "labels/b.nii.gz"}]}
    (data / "dataset.json").write_text(json.dumps(spec))
    assert folderDataset(data, labels) == (
        [{"image": str(data / "images" / "a_0000.nii.gz"), "label": str(data / "labels" / "a.nii.gz")}],
        [{"image": str(data / "images" / "b_0000.nii.gz"), "label": str(data / "labels" / "b.nii.gz")}])
    (data / "dataset.json").write_text(json.dumps({**spec, "labels": {"1": "posterior", "2": "anterior"}}))
    with pytest.raises(ValueError, match=r"label 1 'posterior' is label 2 of model 'tiny-unet' \(its labels: "
                                         r"1 = 'anterior', 2 = 'posterior'\)"):
        folderDataset(data / "dataset.json", labels, "tiny-unet")
    (data / "dataset.json").write_text(json.dumps({**spec, "validation": None}))
    with pytest.raises(ValueError, match="at least 2 image/label pairs, one of them to validate on; 1 found"):
        folderDataset(data, labels)
    (data / "dataset.json").unlink()
    (data / "labels" / "c.nii.gz").unlink()
    with pytest.raises(ValueError, match="c_0000.nii.gz: no label file of the same name"):
        folderDataset(data, labels)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="expected a dataset.json, or images/ and labels/"):
        folderDataset(tmp_path / "empty", labels)

    runner = RecordingRunner()
    (data / "labels" / "c.nii.gz").write_bytes((data / "labels" / "a.nii.gz").read_bytes())
    logic = ImproveModelLogic(runner=runner, temporaryFolder=folders["work"], modelsFolder=folders["user"],
                              shippedFolder=folders["shipped"])
    result = logic.run("tiny-unet", folder=data, epochs=1)
    assert result.modelId == "tiny-unet-finetuned" and len(runner.dataset["training"]) == 5
    with pytest.raises(ValueError, match="either"):
        logic.run("tiny-unet", folder=data, pairs=[])


def _tqdm_lines(desc: str, total: int, **options) -> list[str]:
    from tqdm import tqdm

    stream = io.StringIO()
    bar = tqdm(total=total, desc=desc, file=stream, mininterval=0, miniters=1, **options)
    for _ in range(total):
        bar.update(1)
        bar.set_postfix(loss="0.512", val_dice="0.701", best="0.701")
    bar.close()
    return LineSplitter().feed(stream.getvalue())


def test_progress_and_status_from_real_tqdm_bars():
    loading = _tqdm_lines("loading training cases", 2)
    training = _tqdm_lines("training", 4, unit="epoch")
    assert [trainingProgress(line) for line in loading][-1] == 5
    assert [trainingProgress(line) for line in training][0] == 10 and trainingProgress(training[-1]) == 100
    assert trainingStatus(training[-1]) == "epoch 4/4: loss 0.512, validation Dice 0.701 (best 0.701)"
    assert trainingProgress(_tqdm_lines("network", 2)[-1]) is None  # another bar: not the training's progress
    assert trainingProgress("accuracy 95%") is None and trainingStatus(loading[-1]) is None
    coarse, fine = (_tqdm_lines(f"{stage} stage, training", 4, unit="epoch") for stage in ("coarse", "fine"))
    assert [trainingProgress(coarse[0]), trainingProgress(coarse[-1])] == [5, 45]  # a cascade: one bar per stage,
    assert [trainingProgress(fine[0]), trainingProgress(fine[-1])] == [50, 100]  # never back to 10 % at the second
    assert trainingStatus(coarse[-1]) == "coarse stage, epoch 4/4: loss 0.512, validation Dice 0.701 (best 0.701)"


def test_real_engine_fine_tunes_and_the_model_is_listed(mrml, folders):
    """The real ``cad train --init`` in process on the tiny model, 2 epochs: the argv, dataset.json and labels
    file are what the engine accepts, and the package it writes is registered with the parent's labels."""
    pairs = [add_pair(mrml, f"case {i}", i) for i in range(3)]
    progress: list[int] = []
    logic = ImproveModelLogic(runner=InProcessRunner(), temporaryFolder=folders["work"],
                              modelsFolder=folders["user"], shippedFolder=folders["shipped"])
    result = logic.run("tiny-unet", pairs=pairs, newModelId="tiny-tuned", epochs=2, device="cpu",
                       onProgress=progress.append)
    card = json.loads((result.folder / "model.json").read_text())
    assert card["id"] == "tiny-tuned" and card["labels"] == TINY_LABELS
    assert card["preprocessing"]["spacing"] == [2.0, 2.0, 2.0] and card["inference"]["patch_size"] == [16, 16, 16]
    assert card["training"]["parent"]["parent"] == "tiny-unet" and card["training"]["n_val"] == 1
    assert result.curvesPath is not None and result.curvesPath.read_bytes().startswith(b"\x89PNG")
    listed = ModelManagerLogic(folders["user"], folders["shipped"]).listModels()
    assert "tiny-tuned" in [entry.id for entry in listed]
    assert progress[-1] == 100 and list(folders["work"].iterdir()) == []


def make_tiny_cascade(folder: Path) -> Path:
    """A real cascade package: the tiny DynUNet as both its coarse (4 mm) and its fine (2 mm) stage."""
    from cadcore.registry.packages import save_package

    single = make_tiny_segmentation_package(folder.parent / "single-for-cascade", preprocessing=PREPROCESSING)
    card = {k: v for k, v in single.card.to_dict().items() if k != "weights"}
    card["id"] = folder.name
    card["cascade"] = {"coarse": {"network": card["network"], "preprocessing": {**PREPROCESSING, "spacing": [4.0] * 3},
                                  "inference": {"patch_size": [16, 16, 16], "overlap": 0.25}},
                       "margin_mm": 3.0}
    state = {f"{stage}.{k}": v.clone() for stage in ("coarse", "fine") for k, v in single.load_state_dict().items()}
    shutil.rmtree(single.folder)
    return save_package(folder, card, state).folder


def test_real_engine_fine_tunes_a_cascade_stage_by_stage(mrml, folders):
    """Improve model on a cascade (brain-tumour-cascade's case): the real ``cad train --cascade --init`` fine-tunes
    both stages from the parent's, keeps its ROI margin and coarse resolution, and registers a cascade whose
    staging folder (crops of the user's cases, per-stage checkpoints) is not installed."""
    make_tiny_cascade(folders["user"] / "tiny-cascade")
    pairs = [add_pair(mrml, f"case {i}", i) for i in range(3)]
    logic = ImproveModelLogic(runner=InProcessRunner(), temporaryFolder=folders["work"],
                              modelsFolder=folders["user"], shippedFolder=folders["shipped"])
    progress: list[int] = []
    logs: list[str] = []
    result = logic.run("tiny-cascade", pairs=pairs, newModelId="tiny-cascade-tuned", epochs=2, device="cpu",
                       onProgress=progress.append, onLog=logs.append)
    # the engine's bar names are mapped: the coarse stage ends at 45 % (tqdm always draws a finished bar; the
    # bars in between depend on redraw timing), the fine stage at 100 %
    assert progress == sorted(progress) and {45, 100} <= set(progress)
    assert any(line.startswith("coarse stage, epoch 2/2") for line in logs)
    assert any(line.startswith("fine stage, epoch 2/2") for line in logs)
    card = json.loads((result.folder / "model.json").read_text())
    assert card["id"] == "tiny-cascade-tuned" and card["labels"] == TINY_LABELS
    assert card["cascade"]["margin_mm"] == 3.0
    assert card["cascade"]["coarse"]["preprocessing"]["spacing"] == [4.0, 4.0, 4.0]
    assert card["preprocessing"]["spacing"] == [2.0, 2.0, 2.0]
    assert card["training"]["parent"]["parent"] == "tiny-cascade"
    assert {stage: card["training"]["stages"][stage]["parent"]["parent_stage"] for stage in ("coarse", "fine")} == {
        "coarse": "coarse", "fine": "fine"}
    assert not (result.folder / "cascade").exists() and not (result.folder / "training").exists()
    assert result.curvesPath is not None and result.curvesPath.read_bytes().startswith(b"\x89PNG")
    assert ModelManagerLogic(folders["user"], folders["shipped"]).verifyModel("tiny-cascade-tuned")
    assert list(folders["work"].iterdir()) == []
