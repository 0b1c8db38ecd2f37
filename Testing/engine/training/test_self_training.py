"""``cad train --unlabelled``: self-training on the three sample cases (tiny settings), pseudo-labels, masked loss,
and bad input refused before any training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cadcore.cli import main
from cadcore.registry.packages import find_model
from cadcore.segmentation.sliding_window import flip_sets, tta_probabilities
from cadcore.training.losses import IGNORE_LABEL, MaskedDiceCELoss
from cadcore.training.pseudo_labels import pseudo_label
from cadcore.training.self_training import best_round, weaker_than_teacher

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "sample_data" / "hippocampus"
TINY = ["--filters", "4,8,16", "--patch-size", "16,16,16", "--batch-size", "2", "--device", "cpu", "--val-every", "1",
        "--spacing", "2,2,2", "--val-fraction", "0.5", "--epochs", "1", "--seed", "1"]
LABELLED, UNLABELLED = ["hippocampus_015", "hippocampus_040"], "hippocampus_046"


def labelled_dataset(folder: Path, pseudo_label_file: Path | None = None) -> Path:
    """dataset.json with two labelled sample cases (and, optionally, one entry whose label is ``pseudo_label_file``
    but which is not marked ``"pseudo"``)."""
    entries = [{"image": str(SAMPLES / "imagesTr" / f"{c}.nii.gz"), "label": str(SAMPLES / "labelsTr" / f"{c}.nii.gz")}
               for c in LABELLED]
    if pseudo_label_file is not None:
        entries.append({"image": str(SAMPLES / "imagesTr" / f"{UNLABELLED}.nii.gz"), "label": str(pseudo_label_file)})
    spec = {"name": "two samples", "labels": {"0": "background", "1": "anterior", "2": "posterior"},
            "training": entries}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder / "dataset.json"


def unlabelled_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{UNLABELLED}.nii.gz").write_bytes((SAMPLES / "imagesTr" / f"{UNLABELLED}.nii.gz").read_bytes())
    return folder


@pytest.fixture(scope="module")
def self_trained(tmp_path_factory) -> Path:
    """Run as a user typing RELATIVE paths in a shell (the student's dataset.json must not resolve them twice)."""
    root = tmp_path_factory.mktemp("selftrain")
    labelled_dataset(root / "data")
    unlabelled_folder(root / "unlabelled")
    previous = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", "--data", "data/dataset.json", "-o", "tiny-self", "--unlabelled", "unlabelled",
                     "--rounds", "2", *TINY]) == 0
    finally:
        os.chdir(previous)
    return root / "tiny-self"


def test_self_training_exports_a_package_with_its_rounds(self_trained):
    package = find_model(self_trained)
    package.verify()
    card = package.card.raw
    assert card["id"] == "tiny-self" and card["task"] == "segmentation"
    section = card["training"]["self_training"]
    assert section["rounds"] == 2 and section["confidence_threshold"] == 0.9 and section["flip_tta_axes"] == [0]
    assert (section["n_labelled"], section["n_validation"], section["n_unlabelled"]) == (1, 1, 1)
    assert section["student_init"] == "scratch"
    rounds = section["per_round"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(0.0 <= r["validation_dice"] <= 1.0 for r in rounds)
    assert all(0.0 <= r["kept_voxel_fraction"] <= 1.0 for r in rounds[1:])
    assert rounds[2]["teacher"]["sha256"] == rounds[1]["weights_sha256"]  # the student became the teacher
    assert card["weights"]["sha256"] == rounds[2]["weights_sha256"]
    assert section["best_round_by_validation"] == best_round(rounds)
    assert (self_trained / "training_log.csv").exists()


def test_students_keep_the_teachers_validation_cases(self_trained):
    teacher = find_model(self_trained / "self_training" / "round_0").card.raw
    final = find_model(self_trained).card.raw
    assert final["training"]["split"]["val"] == teacher["training"]["split"]["val"]
    spec = json.loads((self_trained / "self_training" / "pseudo_1" / "dataset.json").read_text())
    assert [Path(e["image"]).name[:-7] for e in spec["validation"]] == teacher["training"]["split"]["val"]
    pseudo = [e for e in spec["training"] if e.get("pseudo")]
    assert [Path(e["image"]).name for e in pseudo] == [f"{UNLABELLED}.nii.gz"]
    label = sitk.ReadImage(pseudo[0]["label"])
    image = sitk.ReadImage(pseudo[0]["image"])
    assert label.GetSize() == image.GetSize() and np.allclose(label.GetOrigin(), image.GetOrigin())
    assert set(np.unique(sitk.GetArrayFromImage(label)).tolist()) <= {0, 1, 2, IGNORE_LABEL}


def test_a_student_weaker_than_its_teacher_is_reported(tmp_path):
    rounds = [{"round": 0, "validation_dice": 0.891}, {"round": 1, "validation_dice": 0.8852}]
    warning = weaker_than_teacher(rounds, tmp_path / "round_0")
    assert warning and "0.8852 < 0.8910" in warning and str(tmp_path / "round_0") in warning
    assert best_round(rounds) == 0
    rounds[1]["validation_dice"] = 0.8910  # a tie is not weaker
    assert weaker_than_teacher(rounds, tmp_path) is None and best_round(rounds) == 0
    assert weaker_than_teacher(rounds[:1], tmp_path) is None  # no student (--rounds 0 never gets here, but safe)


def test_resume_skips_finished_rounds(self_trained, tmp_path):
    before = find_model(self_trained).card.raw["training"]["self_training"]["per_round"]
    data = labelled_dataset(tmp_path / "data")
    unlabelled = self_trained.parent / "unlabelled"
    assert main(["train", "--data", str(data), "-o", str(self_trained), "--unlabelled", str(unlabelled),
                 "--rounds", "2", "--resume", *TINY]) == 0
    after = find_model(self_trained).card.raw["training"]["self_training"]["per_round"]
    assert [r["weights_sha256"] for r in after] == [r["weights_sha256"] for r in before]


def test_resume_with_new_pseudo_labels_restarts_the_students(self_trained, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(self_trained, copy)
    before = find_model(copy).card.raw["training"]["self_training"]["per_round"]
    assert main(["train", "--data", str(labelled_dataset(tmp_path / "data")), "-o", str(copy), "--unlabelled",
                 str(self_trained.parent / "unlabelled"), "--rounds", "1", "--confidence", "0.2", "--resume",
                 *TINY]) == 0
    after = find_model(copy).card.raw["training"]["self_training"]["per_round"]
    assert after[0]["weights_sha256"] == before[0]["weights_sha256"]  # the finished teacher is kept
    assert after[1]["weights_sha256"] != before[1]["weights_sha256"]  # its student retrained on the new labels
    assert after[1]["kept_voxel_fraction"] >= before[1]["kept_voxel_fraction"]
    summary = json.loads((copy / "self_training" / "pseudo_1" / "summary.json").read_text())
    assert summary["key"]["confidence"] == 0.2


def test_a_student_from_the_teacher_starts_with_its_weights(self_trained, tmp_path):
    """--student-init teacher: at a zero learning rate the student must hold exactly the teacher's tensors (which,
    under --init, are the parent's); the exported card names the user's --init parent, not a round of this run;
    --student-augmentation reaches the student's training and not the teacher's."""
    output = tmp_path / "from-teacher"
    assert main(["train", "--data", str(labelled_dataset(tmp_path / "data")), "-o", str(output), "--unlabelled",
                 str(self_trained.parent / "unlabelled"), "--init", str(self_trained), "--student-init", "teacher",
                 "--student-augmentation", "2", *TINY, "--lr", "0"]) == 0
    parent = find_model(self_trained).load_state_dict()
    teacher = find_model(output / "self_training" / "round_0")
    student = find_model(output / "self_training" / "round_1")
    for name, tensor in student.load_state_dict().items():
        assert torch.equal(tensor, teacher.load_state_dict()[name]) and torch.equal(tensor, parent[name]), name
    assert student.card.raw["training"]["parent"]["parent"] == teacher.id
    assert teacher.card.raw["training"]["config"]["augmentation_strength"] == 1.0
    assert student.card.raw["training"]["config"]["augmentation_strength"] == 2.0
    card = find_model(output).card.raw["training"]
    assert card["parent"] == teacher.card.raw["training"]["parent"] and card["parent"]["parent"] == "tiny-self"
    assert card["self_training"]["student_init"].startswith("the previous round's model")
    assert card["self_training"]["student_augmentation"] == 2.0


def test_pseudo_label_ignores_unsure_voxels():
    probabilities = np.zeros((3, 4, 4, 4), np.float32)
    probabilities[0] = 0.95
    probabilities[1] = 0.05
    probabilities[:, 0] = np.array([0.2, 0.5, 0.3])[:, None, None]  # unsure slab: top class 1 at 0.5
    labels, counts = pseudo_label(probabilities, 0.9)
    assert (labels[0] == IGNORE_LABEL).all() and (labels[1:] == 0).all()
    assert counts == {"voxels": 64, "kept": 48, "foreground": 16, "foreground_kept": 0}
    everything, _ = pseudo_label(probabilities, 1.01)
    assert (everything == IGNORE_LABEL).all()
    kept, _ = pseudo_label(probabilities, 0.0)
    assert (kept == probabilities.argmax(0)).all()
    island = probabilities.copy()  # a confident one-voxel island that post-processing would remove
    island[:, 3, 3, 3] = [0.0, 0.0, 1.0]
    island[:, 1, 1, 1] = [0.0, 0.0, 1.0]
    labels, _ = pseudo_label(island, 0.9, {"largest_component": True})
    assert labels[3, 3, 3] == IGNORE_LABEL or labels[1, 1, 1] == IGNORE_LABEL


def test_flip_tta_prediction_is_flip_equivariant():
    from cadcore.registry.networks import build_network, dynunet_spec

    assert flip_sets([2, 0]) == [(), (0,), (2,), (0, 2)]
    torch.manual_seed(0)
    network = build_network(dynunet_spec(1, 3, [4, 8, 16], [1, 2, 2])).eval()
    array = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    device = torch.device("cpu")
    direct = tta_probabilities(network, array, [16, 16, 16], device, [0])
    mirrored = tta_probabilities(network, np.flip(array, 0).copy(), [16, 16, 16], device, [0])
    assert np.allclose(np.flip(mirrored, 1), direct, atol=1e-5)
    assert np.allclose(direct.sum(0), 1.0, atol=1e-5)


def test_masked_loss_ignores_ignored_voxels():
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    reference = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, target)
    assert torch.allclose(MaskedDiceCELoss()(logits, target), reference, atol=1e-6)
    partial = target.clone()
    partial[:, :, :4] = IGNORE_LABEL
    loss = MaskedDiceCELoss()(logits, partial)
    loss.backward()
    assert torch.count_nonzero(logits.grad[:, :, :4]) == 0 and torch.count_nonzero(logits.grad[:, :, 4:]) > 0
    other = logits.detach().clone()
    other[:, :, :4] = torch.randn(2, 3, 4, 8, 8) * 10  # anything at ignored voxels: same loss
    assert torch.allclose(MaskedDiceCELoss()(other, partial), loss.detach(), atol=1e-6)
    kept_only = MaskedDiceCELoss()(logits.detach()[:, :, 4:], target[:, :, 4:])
    assert torch.allclose(kept_only, loss.detach(), atol=1e-6)


def refused(args: list[str], capsys, output: Path) -> str:
    assert main(["train", *args, "-o", str(output), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.split("\r")[-1].startswith("cad train: error:")  # after progress bars
    assert not output.exists()
    return err


def test_refuses_an_empty_unlabelled_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = refused(["--data", str(labelled_dataset(tmp_path / "d")), "--unlabelled", str(tmp_path / "empty")], capsys,
                  tmp_path / "m")
    assert str(tmp_path / "empty") in err and "no volumes" in err


def test_refuses_a_list_naming_a_missing_file(tmp_path, capsys):
    listing = tmp_path / "unlabelled.txt"
    listing.write_text(f"{SAMPLES / 'imagesTr' / (UNLABELLED + '.nii.gz')}\n\nnot_there.nii.gz\n")
    err = refused(["--data", str(labelled_dataset(tmp_path / "d")), "--unlabelled", str(listing)], capsys,
                  tmp_path / "m")
    assert str(tmp_path / "not_there.nii.gz") in err and "line 3" in err


def test_refuses_an_unreadable_unlabelled_volume(tmp_path, capsys):
    folder = unlabelled_folder(tmp_path / "u")
    (folder / "broken.nii.gz").write_bytes(b"this is not an image")
    err = refused(["--data", str(labelled_dataset(tmp_path / "d")), "--unlabelled", str(folder)], capsys,
                  tmp_path / "m")
    assert str(folder / "broken.nii.gz") in err


def test_refuses_an_unlabelled_volume_that_is_a_labelled_case(tmp_path, capsys):
    folder = tmp_path / "u"
    folder.mkdir()
    (folder / f"{LABELLED[0]}.nii.gz").write_bytes((SAMPLES / "imagesTr" / f"{LABELLED[0]}.nii.gz").read_bytes())
    err = refused(["--data", str(labelled_dataset(tmp_path / "d")), "--unlabelled", str(folder)], capsys,
                  tmp_path / "m")
    assert "same case id" in err


def test_ignore_value_is_refused_outside_pseudo_labelled_cases(tmp_path, capsys):
    label = sitk.ReadImage(str(SAMPLES / "labelsTr" / f"{UNLABELLED}.nii.gz"))
    array = sitk.GetArrayFromImage(label)
    array[0] = IGNORE_LABEL
    marked = sitk.GetImageFromArray(array)
    marked.CopyInformation(label)
    sitk.WriteImage(marked, str(tmp_path / "marked.nii.gz"))
    data = labelled_dataset(tmp_path / "d", pseudo_label_file=tmp_path / "marked.nii.gz")
    err = refused(["--data", str(data)], capsys, tmp_path / "m")
    assert "label values [255]" in err and "marked.nii.gz" in err


def test_self_training_options_need_unlabelled(tmp_path, capsys):
    err = refused(["--data", str(labelled_dataset(tmp_path / "d")), "--confidence", "0.8"], capsys, tmp_path / "m")
    assert "--confidence" in err and "--unlabelled" in err


@pytest.mark.parametrize(("flags", "named"), [(["--student-init", "teacher"], "--student-init"),
                                              (["--student-augmentation", "2"], "--student-augmentation")])
def test_student_options_need_unlabelled(tmp_path, capsys, flags, named):
    err = refused(["--data", str(labelled_dataset(tmp_path / "d")), *flags], capsys, tmp_path / "m")
    assert named in err and "--unlabelled" in err


def test_refuses_an_out_of_range_student_augmentation(tmp_path, capsys):
    err = refused(["--data", str(labelled_dataset(tmp_path / "d")), "--unlabelled",
                   str(unlabelled_folder(tmp_path / "u")), "--student-augmentation", "5"], capsys, tmp_path / "m")
    assert "--student-augmentation must be in [0, 3], got 5.0" in err
