"""``cad train --task classify`` (CNN and classical baselines) on a synthetic MedMNIST-style .npz, then the packages
through ``cad evaluate`` and ``cad classify``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.cli import main
from cadcore.registry.packages import find_model

TINY = ["--widths", "4,8,16,32", "--device", "cpu", "--batch-size", "8", "--seed", "1"]


def shapes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary masks, 16³: class 0 = balls, class 1 = elongated bars (a shape task like AdrenalMNIST3D)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    k, j, i = np.indices((16, 16, 16))
    for index in range(n):
        label = index % 2
        c = rng.uniform(6, 10, 3)
        if label == 0:
            r = rng.uniform(3, 5)
            mask = (k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 < r * r
        else:
            mask = (abs(k - c[0]) < 6) & (abs(j - c[1]) < 1.5) & (abs(i - c[2]) < 1.5)
        images.append(mask.astype(np.uint8) * 255)
        labels.append([label])
    return np.array(images), np.array(labels)


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "shapes.npz"
    train_x, train_y = shapes(24, 0)
    val_x, val_y = shapes(10, 1)
    np.savez(path, train_images=train_x, train_labels=train_y, val_images=val_x, val_labels=val_y)
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory, npz) -> Path:
    output = tmp_path_factory.mktemp("m") / "shape-resnet"
    assert main(["train", "--task", "classify", "--data", str(npz), "-o", str(output), "--epochs", "2",
                 "--classes", "ball,bar", *TINY]) == 0
    return output


def test_cnn_package_has_calibration_and_metrics(cnn):
    card = find_model(cnn).card.raw
    assert card["task"] == "classification" and card["network"]["name"] == "ResNet"
    assert [c["name"] for c in card["classes"]] == ["ball", "bar"]
    assert card["roi"]["input"] == "mask" and card["roi"]["fit"] == "extent"
    assert card["calibration"]["temperature"] > 0
    assert {"ece_before", "ece_after"} <= set(card["calibration"])
    assert {"auc", "acc", "sensitivity", "specificity", "ece"} <= set(card["metrics"]["validation"])
    assert len(card["training"]["history"]) == 2


@pytest.mark.parametrize("kind", ["svm", "rf"])
def test_baselines_train_evaluate_and_classify(tmp_path, capsys, npz, kind):
    output = tmp_path / f"shape-{kind}"
    assert main(["train", "--task", "classify", "--baseline", kind, "--data", str(npz), "-o", str(output),
                 "--classes", "ball,bar", "--seed", "1"]) == 0
    card = find_model(output).card.raw
    assert card["network"]["name"] == "baseline" and card["network"]["params"]["kind"] == kind
    assert card["metrics"]["validation"]["auc"] > 0.8  # balls vs bars is easy for shape features
    report_path = tmp_path / "report.json"
    assert main(["evaluate", "-m", str(output), "--data", str(npz), "--split", "val", "-o", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["auc"] == pytest.approx(card["metrics"]["validation"]["auc"], abs=1e-6)
    # a real volume + mask through cad classify: same ROI path, no heatmap for a baseline
    x, _ = shapes(2, 5)
    volume = sitk.GetImageFromArray(x[1].astype(np.float32))
    volume.SetSpacing((0.8, 0.8, 2.0))
    mask = sitk.GetImageFromArray((x[1] > 0).astype(np.uint8))
    mask.CopyInformation(volume)
    sitk.WriteImage(volume, str(tmp_path / "v.nrrd"))
    sitk.WriteImage(mask, str(tmp_path / "m.nrrd"))
    capsys.readouterr()
    assert main(["classify", str(tmp_path / "v.nrrd"), "-m", str(output), "--mask", str(tmp_path / "m.nrrd"),
                 "-o", str(tmp_path / "r.json"), "--heatmap", str(tmp_path / "h.nii.gz")]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["heatmap"] is None and result["calibrated"] is False
    assert not (tmp_path / "h.nii.gz").exists()


def test_cnn_evaluate_and_missing_test_split(tmp_path, capsys, cnn, npz):
    assert main(["evaluate", "-m", str(cnn), "--data", str(npz), "--split", "val", "-o", str(tmp_path / "e.json"),
                 "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 10
    capsys.readouterr()
    code = main(["evaluate", "-m", str(cnn), "--data", str(npz), "--split", "test", "-o", str(tmp_path / "t.json")])
    assert code == 2
    err = capsys.readouterr().err
    assert "test_images" in err and str(npz) in err and err.count("\n") == 1


def test_npz_missing_split_for_training(tmp_path, capsys):
    path = tmp_path / "only_train.npz"
    x, y = shapes(4, 0)
    np.savez(path, train_images=x, train_labels=y)
    assert main(["train", "--task", "classify", "--data", str(path), "-o", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "val" in err and "only_train.npz" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_densenet_refuses_a_roi_too_small_before_training(tmp_path, capsys, npz):
    code = main(["train", "--task", "classify", "--network", "densenet121", "--data", str(npz), "-o",
                 str(tmp_path / "d"), "--epochs", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "too small for DenseNet121" in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()
