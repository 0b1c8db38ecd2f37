"""``cad evaluate --split all`` says which cases the model may have trained on (those of its training data that its
card does not list as held out) and reports the mean Dice over all cases and over the held-out ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cadcore.cli import main
from conftest import make_tiny_segmentation_package

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "sample_data" / "hippocampus"  # hippocampus_015, _040, _046
SAMPLES_NAME = json.loads((SAMPLES / "dataset.json").read_text())["name"]
KEYS = {"n_trained_on", "n_held_out", "mean_dice_held_out", "mean_dice_trained_on", "held_out_basis"}


def evaluate(tmp_path: Path, capsys, training: dict | None, split: str = "all") -> dict:
    overrides = {"training": training} if training is not None else {}
    package = make_tiny_segmentation_package(tmp_path / "tiny-unet", seed=1, **overrides)
    report_path = tmp_path / "report.json"
    code = main(["evaluate", "-m", str(package.folder), "--data", str(SAMPLES), "--split", split, "-o",
                 str(report_path), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text())
    assert KEYS <= set(report)
    return report


def mean_dice(cases: list[dict]) -> float:
    """The report's mean Dice (mean over labels of the per-label mean over cases), recomputed from its cases."""
    return float(np.mean([np.mean([c["dice"][value] for c in cases]) for value in ("1", "2")]))


def test_cases_not_held_out_by_the_card_are_marked_and_both_means_reported(tmp_path, capsys):
    """The card holds out hippocampus_040 of data with other ids: it shares this dataset's ids, so the other two
    sample cases were in the model's training data."""
    report = evaluate(tmp_path, capsys, {"data": "MSD Task04 Hippocampus, 208 cases", "n_train": 166,
                                         "split": {"val": ["hippocampus_040", "hippocampus_090"]}})
    marks = {case["id"]: case["trained_on"] for case in report["cases"]}
    assert marks == {"hippocampus_015": True, "hippocampus_040": False, "hippocampus_046": True}
    assert report["n_cases"] == 3 and report["n_trained_on"] == 2 and report["n_held_out"] == 1
    held_out = [case for case in report["cases"] if not case["trained_on"]]
    trained_on = [case for case in report["cases"] if case["trained_on"]]
    assert report["mean_dice_held_out"] == pytest.approx(mean_dice(held_out), abs=1e-4)
    assert report["mean_dice_trained_on"] == pytest.approx(mean_dice(trained_on), abs=1e-4)
    assert report["mean_dice"] == pytest.approx(mean_dice(report["cases"]), abs=1e-4)
    assert "held-out" in report["held_out_basis"] and "trained on" in report["held_out_basis"]


def test_the_models_own_training_data_with_nothing_of_it_held_out_here(tmp_path, capsys):
    """The card names this very dataset as its training data: every case not on its held-out list was trained on."""
    report = evaluate(tmp_path, capsys, {"data": SAMPLES_NAME, "split": {"val": ["hippocampus_999"]}})
    assert all(case["trained_on"] is True for case in report["cases"])
    assert report["n_trained_on"] == 3 and report["n_held_out"] == 0 and report["mean_dice_held_out"] is None


def test_other_data_is_not_claimed_either_way(tmp_path, capsys):
    """Held-out ids of another dataset and another data name: the report says it cannot tell, case by case."""
    report = evaluate(tmp_path, capsys, {"data": "some other collection", "split": {"val": ["patient_7"]}})
    assert all(case["trained_on"] is None for case in report["cases"])
    assert report["n_trained_on"] is None and report["mean_dice_held_out"] is None
    assert "unknown" in report["held_out_basis"]


def test_a_card_without_training_provenance(tmp_path, capsys):
    report = evaluate(tmp_path, capsys, None)
    assert all(case["trained_on"] is None for case in report["cases"]) and report["n_trained_on"] is None


def test_split_val_is_held_out_by_definition(tmp_path, capsys):
    report = evaluate(tmp_path, capsys, {"data": SAMPLES_NAME, "split": {"val": ["hippocampus_046"]}}, split="val")
    assert [case["trained_on"] for case in report["cases"]] == [False]
    assert report["n_trained_on"] == 0 and report["n_held_out"] == 1
    assert report["mean_dice_held_out"] == report["mean_dice"]
