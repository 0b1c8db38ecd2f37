"""``cad classify``: ROI inputs (mask, point, volume), calibrated probabilities, Grad-CAM heatmap on the input grid,
and the bad inputs the contract names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.classification.roi import extract_roi, lps_to_ras
from cadcore.cli import main

REQUIRED = {"model", "classes", "probabilities", "predicted", "calibrated", "roi", "heatmap", "heatmap_peak_ras"}


def lesion_volume(image: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """A bright ellipsoidal 'lesion' (label 3) in the given geometry, and its mask."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    k, j, i = np.indices(array.shape)
    c = np.array(array.shape) / 2
    inside = ((k - c[0]) / 3) ** 2 + ((j - c[1]) / 4) ** 2 + ((i - c[2]) / 3) ** 2 < 1
    array[inside] += 150
    volume = sitk.GetImageFromArray(array)
    volume.CopyInformation(image)
    mask = sitk.GetImageFromArray((inside * 3).astype(np.uint8))
    mask.CopyInformation(image)
    return volume, mask


def classify(capsys, *args: str) -> tuple[int, str]:
    code = main(["classify", *args])
    return code, capsys.readouterr().err


@pytest.fixture
def lesion(tmp_path, oblique_image):
    volume, mask = lesion_volume(oblique_image)
    sitk.WriteImage(volume, str(tmp_path / "volume.nrrd"))
    sitk.WriteImage(mask, str(tmp_path / "mask.nrrd"))
    return tmp_path / "volume.nrrd", tmp_path / "mask.nrrd", volume


def test_mask_roi_heatmap_geometry_is_the_inputs(tmp_path, capsys, tiny_classifier, lesion):
    volume_path, mask_path, volume = lesion
    result_path, heatmap_path = tmp_path / "result.json", tmp_path / "heat.nii.gz"
    code, err = classify(capsys, str(volume_path), "-m", str(tiny_classifier.folder), "--mask", str(mask_path),
                         "--label", "3", "-o", str(result_path), "--heatmap", str(heatmap_path), "--device", "cpu")
    assert code == 0, err
    result = json.loads(result_path.read_text())
    assert REQUIRED <= set(result)
    assert result["classes"] == ["benign", "malignant"]
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["calibrated"] is True and result["temperature"] == 1.5
    assert result["predicted"] in result["classes"] and result["roi"]["source"] == "mask"
    heatmap = sitk.ReadImage(str(heatmap_path))
    assert heatmap.GetSize() == volume.GetSize()
    assert heatmap.GetSpacing() == pytest.approx(volume.GetSpacing(), abs=1e-6)
    assert heatmap.GetOrigin() == pytest.approx(volume.GetOrigin(), abs=1e-6)
    assert heatmap.GetDirection() == pytest.approx(volume.GetDirection(), abs=1e-6)
    values = sitk.GetArrayViewFromImage(heatmap)
    assert values.max() > 0 and np.isfinite(values).all()
    # the peak is reported in RAS and lies inside the volume
    peak_lps = [-result["heatmap_peak_ras"][0], -result["heatmap_peak_ras"][1], result["heatmap_peak_ras"][2]]
    index = volume.TransformPhysicalPointToContinuousIndex(peak_lps)
    assert all(-0.5 <= i <= n - 0.5 for i, n in zip(index, volume.GetSize()))


def test_point_roi_in_ras_and_padding_is_reported(tmp_path, capsys, tiny_classifier, lesion):
    volume_path, _, volume = lesion
    corner_ras = lps_to_ras(volume.TransformIndexToPhysicalPoint((0, 0, 0)))
    result_path = tmp_path / "r.json"
    code, err = classify(capsys, str(volume_path), "-m", str(tiny_classifier.folder), "--center",
                         ",".join(str(v) for v in corner_ras), "-o", str(result_path), "--device", "cpu")
    assert code == 0, err
    roi = json.loads(result_path.read_text())["roi"]
    assert roi["source"] == "point" and roi["padded"] is True
    assert roi["centre_ras"] == pytest.approx(corner_ras, abs=1e-4)


def test_whole_volume_roi(tmp_path, capsys, tiny_classifier, lesion):
    volume_path, _, _ = lesion
    code, err = classify(capsys, str(volume_path), "-m", str(tiny_classifier.folder), "-o", str(tmp_path / "r.json"),
                         "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["roi"]["source"] == "volume"


def test_roi_is_cut_in_physical_space(oblique_image):
    """The ROI centre is the lesion centroid in mm, whatever the storage order."""
    volume, mask = lesion_volume(oblique_image)
    roi = extract_roi(volume, {"size": [16, 16, 16], "spacing": [1.0, 1.0, 1.0]}, mask, 3)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    assert roi.info["centre_ras"] == pytest.approx(lps_to_ras(stats.GetCentroid(3)), abs=1e-6)
    assert roi.mask is not None and roi.mask[8, 8, 8]
    assert roi.padded is False or roi.info["padded"] is True


# --- bad inputs ---------------------------------------------------------------------------------------------------


def test_mask_with_another_grid(tmp_path, capsys, tiny_classifier, lesion):
    volume_path, _, volume = lesion
    shifted = sitk.Image(volume.GetSize(), sitk.sitkUInt8) + 3
    shifted.CopyInformation(volume)
    shifted.SetOrigin([o + 5 for o in volume.GetOrigin()])
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nrrd"))
    code, err = classify(capsys, str(volume_path), "-m", str(tiny_classifier.folder), "--mask",
                         str(tmp_path / "shifted.nrrd"), "-o", str(tmp_path / "r.json"))
    assert code == 2 and "grid" in err and "shifted.nrrd" in err and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()


def test_label_absent_from_mask(tmp_path, capsys, tiny_classifier, lesion):
    volume_path, mask_path, _ = lesion
    code, err = classify(capsys, str(volume_path), "-m", str(tiny_classifier.folder), "--mask", str(mask_path),
                         "--label", "7", "-o", str(tmp_path / "r.json"), "--heatmap", str(tmp_path / "h.nii.gz"))
    assert code == 2 and "label 7" in err and "[3]" in err and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "h.nii.gz").exists()


def test_centre_outside_volume(tmp_path, capsys, tiny_classifier, lesion):
    volume_path, _, _ = lesion
    code, err = classify(capsys, str(volume_path), "-m", str(tiny_classifier.folder), "--center", "900,900,900",
                         "-o", str(tmp_path / "r.json"))
    assert code == 2 and "outside the volume" in err and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()


def test_segmentation_model_is_refused(tmp_path, capsys, tiny_model, lesion):
    volume_path, _, _ = lesion
    code, err = classify(capsys, str(volume_path), "-m", str(tiny_model.folder), "-o", str(tmp_path / "r.json"))
    assert code == 2 and "segmentation model" in err and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()


def test_existing_result_needs_force(tmp_path, capsys, tiny_classifier, lesion):
    volume_path, _, _ = lesion
    (tmp_path / "r.json").write_text("keep")
    code, err = classify(capsys, str(volume_path), "-m", str(tiny_classifier.folder), "-o", str(tmp_path / "r.json"))
    assert code == 2 and "--force" in err
    assert (tmp_path / "r.json").read_text() == "keep"


def test_npz_missing_split(tmp_path, capsys, tiny_classifier):
    data = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(data, train_images=rng.integers(0, 2, (6, 16, 16, 16)).astype(np.uint8) * 255,
             train_labels=np.array([[0], [1]] * 3), val_images=np.zeros((2, 16, 16, 16), np.uint8),
             val_labels=np.array([[0], [1]]))
    code = main(["evaluate", "-m", str(tiny_classifier.folder), "--data", str(data), "--split", "test", "-o",
                 str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert code == 2 and "test" in err and "tiny.npz" in err and err.count("\n") == 1
    assert not (tmp_path / "e.json").exists()


def test_evaluate_classifier_on_npz(tmp_path, capsys, tiny_classifier):
    data = tmp_path / "tiny.npz"
    rng = np.random.default_rng(1)
    np.savez(data, train_images=rng.integers(0, 2, (4, 16, 16, 16)).astype(np.uint8) * 255,
             train_labels=np.array([[0], [1]] * 2), val_images=rng.integers(0, 2, (6, 16, 16, 16)).astype(np.uint8),
             val_labels=np.array([[0], [1]] * 3))
    report_path = tmp_path / "e.json"
    code = main(["evaluate", "-m", str(tiny_classifier.folder), "--data", str(data), "--split", "val", "-o",
                 str(report_path), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(report_path.read_text())
    assert {"model", "n", "acc", "auc", "sensitivity", "specificity", "ece", "confusion_matrix"} <= set(report)
    assert report["n"] == 6 and len(report["samples"]) == 6
    assert Path(report["roc_png"]).read_bytes()[:4] == b"\x89PNG"
