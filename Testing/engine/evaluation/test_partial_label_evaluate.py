"""``cad evaluate`` on partly labelled data: a label a case's ``labels_present`` leaves out is not scored there, each
label's summary is over the cases that have it, with their number, and the report says so (real files, a real tiny
model trained here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from organ_cases import write_organ_case

from cadcore.cli import main


def write_case(root: Path, name: str, seed: int, drawn: tuple[int, ...]) -> dict:
    """Both organs are in the image; only ``drawn`` are in the label (an organ that was not contoured)."""
    return write_organ_case(root, name, seed, organs=(1, 2), drawn=drawn)


def write_spec(root: Path, name: str, training: list[dict]) -> Path:
    spec = {"name": name, "labels": {"0": "background", "1": "organ one", "2": "organ two"},
            "modality": {"0": "CT"}, "training": training}
    path = root / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fully")
    spec = write_spec(root, "train", [write_case(root, f"t{i}", i, (1, 2)) for i in range(3)])
    output = root / "tiny-partial-eval"
    assert main(["train", "--data", str(spec), "-o", str(output), "--epochs", "2", "--filters", "4,8,16",
                 "--patch-size", "16,16,16", "--spacing", "2,2,2", "--batch-size", "2", "--device", "cpu",
                 "--modality", "CT", "--val-fraction", "0.34"]) == 0
    return output


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    """e0: organ two not contoured (listed absent); e1, e2: both organs."""
    root = tmp_path_factory.mktemp("partial")
    entries = [write_case(root, "e0", 20, (1,)), write_case(root, "e1", 21, (1, 2)), write_case(root, "e2", 22, (1, 2))]
    entries[0]["labels_present"] = [1]
    write_spec(root, "full_listing", [{k: v for k, v in e.items() if k != "labels_present"} for e in entries])
    return write_spec(root, "partial", entries)


def evaluate(model: Path, data: Path, output: Path, capsys) -> tuple[dict, str]:
    assert main(["evaluate", "-m", str(model), "--data", str(data), "--split", "all", "-o", str(output),
                 "--device", "cpu"]) == 0
    return json.loads(output.read_text()), capsys.readouterr().out


def test_absent_labels_are_not_scored(model: Path, test_set: Path, tmp_path: Path, capsys) -> None:
    report, out = evaluate(model, test_set, tmp_path / "partial.json", capsys)
    cases = {row["id"]: row for row in report["cases"]}
    assert cases["e0"]["labels_present"] == [1] and "labels_present" not in cases["e1"]
    assert cases["e0"]["dice"]["2"] is None and cases["e0"]["hd95"]["2"] is None
    assert cases["e0"]["dice"]["1"] is not None
    two, one = report["per_label"]["2"], report["per_label"]["1"]
    assert two["n_cases"] == 2 and one["n_cases"] == 3
    assert two["dice_mean"] == pytest.approx(np.mean([cases["e1"]["dice"]["2"], cases["e2"]["dice"]["2"]]), abs=1e-5)
    assert one["dice_mean"] == pytest.approx(np.mean([c["dice"]["1"] for c in cases.values()]), abs=1e-5)
    assert report["mean_dice"] == pytest.approx((one["dice_mean"] + two["dice_mean"]) / 2, abs=1e-5)
    assert "(scored on 2 cases)" in out and "(scored on 3 cases)" in out


def test_without_the_listing_every_case_is_scored(model: Path, test_set: Path, tmp_path: Path, capsys) -> None:
    """The same files without labels_present: e0's empty organ two is scored as background (the old behaviour)."""
    report, out = evaluate(model, test_set.parent / "full_listing.json", tmp_path / "full.json", capsys)
    e0 = next(row for row in report["cases"] if row["id"] == "e0")
    assert isinstance(e0["dice"]["2"], float) and "n_cases" not in report["per_label"]["2"]  # fields as before
    assert "scored on" not in out


def test_a_label_no_case_has_is_reported_as_unscored(model: Path, test_set: Path, tmp_path: Path, capsys) -> None:
    spec = json.loads(test_set.read_text())
    for entry in spec["training"]:
        entry["labels_present"] = [1]
    only_one = test_set.parent / "only_one.json"
    only_one.write_text(json.dumps({**spec, "name": "only one"}))
    report, out = evaluate(model, only_one, tmp_path / "one.json", capsys)
    assert report["per_label"]["2"]["n_cases"] == 0 and report["per_label"]["2"]["dice_mean"] is None
    assert report["mean_dice"] == report["per_label"]["1"]["dice_mean"]
    assert "Dice n/a" in out and "(scored on 0 cases)" in out
