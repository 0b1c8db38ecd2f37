"""``cad train`` and ``cad evaluate`` on the three sample cases shipped in the repository (tiny settings)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cadcore.cli import main
from cadcore.registry.packages import find_model

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "sample_data" / "hippocampus"
TINY = ["--filters", "4,8,16", "--patch-size", "16,16,16", "--batch-size", "2", "--device", "cpu", "--val-every", "1",
        "--spacing", "2,2,2",
        "--val-fraction", "0.34"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("train") / "tiny-hippo"
    assert main(["train", "--data", str(SAMPLES), "-o", str(output), "--epochs", "2", "--seed", "3", *TINY]) == 0
    return output


def test_train_exports_a_loadable_package(trained):
    package = find_model(trained)
    package.verify()
    card = package.card.raw
    assert card["task"] == "segmentation" and card["id"] == "tiny-hippo"
    assert [label["value"] for label in card["labels"]] == [1, 2]
    assert card["training"]["n_train"] == 2 and len(card["training"]["split"]["val"]) == 1
    assert card["preprocessing"]["normalization"]["kind"] == "mr"
    rows = list(csv.DictReader(open(trained / "training_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and "dice_1" in rows[0]
    assert (trained / "training_curves.png").stat().st_size > 1000
    summary = json.loads((trained / "training_summary.json").read_text())
    assert summary["epoch"] == 2


def test_split_is_deterministic_from_seed(tmp_path, trained):
    again = tmp_path / "again"
    assert main(["train", "--data", str(SAMPLES), "-o", str(again), "--epochs", "1", "--seed", "3", *TINY]) == 0
    assert find_model(again).card.raw["training"]["split"] == find_model(trained).card.raw["training"]["split"]


def test_resume_continues_from_last_checkpoint(tmp_path):
    output = tmp_path / "resumable"
    assert main(["train", "--data", str(SAMPLES), "-o", str(output), "--epochs", "1", *TINY]) == 0
    assert main(["train", "--data", str(SAMPLES), "-o", str(output), "--epochs", "3", "--resume", *TINY]) == 0
    rows = list(csv.DictReader(open(output / "training_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


def test_evaluate_report_has_contract_fields(tmp_path, capsys, trained):
    report_path = tmp_path / "report.json"
    code = main(["evaluate", "-m", str(trained), "--data", str(SAMPLES), "--split", "val", "-o", str(report_path),
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text())
    assert report["model"] == "tiny-hippo" and report["n_cases"] == 1 and len(report["cases"]) == 1
    assert set(report["per_label"]) == {"1", "2"}
    for row in report["per_label"].values():
        assert {"name", "dice_mean", "hd95_mean"} <= set(row)
        assert 0.0 <= row["dice_mean"] <= 1.0
    assert report["cases"][0]["id"] in find_model(trained).card.raw["training"]["split"]["val"]


def test_evaluate_split_all_and_refuses_overwrite(tmp_path, capsys, trained):
    report_path = tmp_path / "all.json"
    assert main(["evaluate", "-m", str(trained), "--data", str(SAMPLES), "--split", "all", "-o", str(report_path),
                 "--device", "cpu"]) == 0
    assert json.loads(report_path.read_text())["n_cases"] == 3
    capsys.readouterr()
    assert main(["evaluate", "-m", str(trained), "--data", str(SAMPLES), "-o", str(report_path)]) == 2
    assert "--force" in capsys.readouterr().err


def test_train_refuses_dataset_with_missing_files(tmp_path, capsys):
    spec = {"labels": {"0": "bg", "1": "x"}, "training": [{"image": "./nope.nii.gz", "label": "./nope_l.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    assert main(["train", "--data", str(tmp_path), "-o", str(tmp_path / "m"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "missing file" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def _one_case_dataset(folder: Path, label_names: dict[str, str], shift_origin: bool = False) -> Path:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(SAMPLES / "imagesTr" / "hippocampus_015.nii.gz"))
    label = sitk.ReadImage(str(SAMPLES / "labelsTr" / "hippocampus_015.nii.gz"))
    if shift_origin:
        label.SetOrigin([o + 3.0 for o in label.GetOrigin()])
    for name, img in (("img.nii.gz", image), ("lab.nii.gz", label), ("copy_img.nii.gz", image),
                      ("copy_lab.nii.gz", label)):  # two case ids: a case listed twice is refused
        sitk.WriteImage(img, str(folder / name))
    entries = [{"image": "./img.nii.gz", "label": "./lab.nii.gz"},
               {"image": "./copy_img.nii.gz", "label": "./copy_lab.nii.gz"}]
    (folder / "dataset.json").write_text(json.dumps({"labels": label_names, "training": entries}))
    return folder


def test_train_refuses_label_grid_mismatch_before_training(tmp_path, capsys):
    data = _one_case_dataset(tmp_path, {"0": "bg", "1": "a", "2": "p"}, shift_origin=True)
    assert main(["train", "--data", str(data), "-o", str(tmp_path / "m"), "--epochs", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert "lab.nii.gz" in err and "grid differs" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_train_refuses_label_values_outside_the_label_set(tmp_path, capsys):
    data = _one_case_dataset(tmp_path, {"0": "bg", "1": "hippocampus"})  # the files also contain label 2
    assert main(["train", "--data", str(data), "-o", str(tmp_path / "m"), "--epochs", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert "label values [2]" in err and "lab.nii.gz" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def _explicit_split_dataset(folder: Path, validation: list[str], training: list[str]) -> Path:
    def entry(case: str) -> dict[str, str]:
        return {"image": str(SAMPLES / "imagesTr" / f"{case}.nii.gz"),
                "label": str(SAMPLES / "labelsTr" / f"{case}.nii.gz")}

    spec = {"labels": {"0": "background", "1": "anterior", "2": "posterior"},
            "training": [entry(c) for c in training], "validation": [entry(c) for c in validation]}
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder


def test_dataset_json_validation_list_is_the_split(tmp_path, capsys):
    cases = sorted(p.name[:-7] for p in (SAMPLES / "imagesTr").glob("*.nii.gz"))
    data = _explicit_split_dataset(tmp_path, [cases[0]], cases[1:])
    output = tmp_path / "m"
    assert main(["train", "--data", str(data), "-o", str(output), "--epochs", "1", *TINY]) == 0
    card = find_model(output).card.raw
    assert card["training"]["split"]["val"] == [cases[0]] and card["training"]["n_train"] == len(cases) - 1
    report = tmp_path / "r.json"
    assert main(["evaluate", "-m", str(output), "--data", str(data), "--split", "val", "-o", str(report),
                 "--device", "cpu"]) == 0
    assert [c["id"] for c in json.loads(report.read_text())["cases"]] == [cases[0]]


def test_dataset_json_refuses_a_case_in_both_splits(tmp_path, capsys):
    cases = sorted(p.name[:-7] for p in (SAMPLES / "imagesTr").glob("*.nii.gz"))
    data = _explicit_split_dataset(tmp_path, [cases[0]], cases)
    assert main(["train", "--data", str(data), "-o", str(tmp_path / "m"), "--epochs", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert "both 'training' and 'validation'" in err and "dataset.json" in err and err.count("\n") == 1
