"""``cad classify --mask`` without ``--label``: the lesion is the largest connected component of one label value
(26-connectivity), not the highest label value; the result says which label and component it took."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.classification.roi import extract_roi, lps_to_ras
from cadcore.cli import main

SPEC = {"size": [16, 16, 16], "spacing": [1.0, 1.0, 1.0]}


def ball(shape, centre, radius) -> np.ndarray:
    k, j, i = np.indices(shape)
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2


def geometry(array: np.ndarray, pixel=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array if pixel is None else array.astype(pixel))
    image.SetSpacing((0.9, 1.1, 1.3))
    image.SetOrigin((10.0, -20.0, 5.0))
    return image


@pytest.fixture
def two_lesions(tmp_path):
    """A big lesion (label 1), a small detached fragment of label 1, and a small lesion with label 5."""
    shape = (40, 40, 40)
    labels = np.zeros(shape, np.uint8)
    big = ball(shape, (14, 14, 14), 6)
    labels[big] = 1
    labels[ball(shape, (34, 5, 5), 1)] = 1  # a stray fragment of label 1, far from the big lesion
    labels[ball(shape, (30, 30, 30), 2)] = 5
    rng = np.random.default_rng(0)
    volume = geometry(rng.normal(100, 10, shape).astype(np.float32) + 80 * (labels > 0))
    mask = geometry(labels)
    sitk.WriteImage(volume, str(tmp_path / "volume.nii.gz"))
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    return tmp_path / "volume.nii.gz", tmp_path / "mask.nii.gz", mask, big


def centroid_ras(mask: sitk.Image, component: np.ndarray) -> list[float]:
    kji = np.argwhere(component).mean(axis=0)
    return lps_to_ras(mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in kji[::-1]]))


def test_cli_without_label_takes_the_largest_lesion_and_says_so(tmp_path, capsys, tiny_classifier, two_lesions):
    volume_path, mask_path, mask, big = two_lesions
    result_path = tmp_path / "result.json"
    code = main(["classify", str(volume_path), "-m", str(tiny_classifier.folder), "--mask", str(mask_path),
                 "-o", str(result_path), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    roi = json.loads(result_path.read_text())["roi"]
    assert roi["source"] == "mask" and roi["label"] == 1  # not 5, the highest value
    assert roi["label_chosen"] == f"largest connected component ({int(big.sum())} voxels)"
    assert roi["lesion_voxels"] == int(big.sum())
    # the ROI is centred on the big component alone: the stray label-1 fragment does not pull the centre
    assert roi["centre_ras"] == pytest.approx(centroid_ras(mask, big), abs=1e-4)


def test_the_roi_mask_is_the_component_not_every_voxel_of_its_label(two_lesions):
    volume_path, _, mask, big = two_lesions
    roi = extract_roi(sitk.ReadImage(str(volume_path)), {"size": [48, 48, 48], "spacing": [1.5, 1.5, 1.5]}, mask)
    assert roi.info["label"] == 1 and roi.info["other_components"] == 2
    assert roi.padded is False or roi.info["padded"] is True
    # the ROI (72 mm wide) reaches the stray fragment and the label-5 lesion, but its mask holds only the big lesion
    for fragment in ((34, 5, 5), (30, 30, 30)):
        point = mask.TransformIndexToPhysicalPoint(fragment[::-1])
        index = roi.grid.TransformPhysicalPointToIndex(point)
        assert all(0 <= i < n for i, n in zip(index, roi.grid.GetSize()))
        assert not roi.mask[index]
    centre = np.array(mask.TransformIndexToPhysicalPoint((14, 14, 14)))
    inside = [np.linalg.norm(np.array(roi.grid.TransformIndexToPhysicalPoint([int(v) for v in ijk])) - centre)
              for ijk in np.argwhere(roi.mask)]
    assert inside and max(inside) < 6 * 1.3 + 1.5  # every ROI-mask voxel lies on the big lesion


def test_touching_labels_count_as_separate_lesions():
    """Two labels that touch are not one lesion: the largest component of a single label value wins."""
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:15, 5:15, 5:15] = 2  # 1000 voxels
    labels[15:23, 5:15, 5:15] = 3  # 800 voxels, touching label 2 along a face
    mask = geometry(labels)
    roi = extract_roi(geometry(np.zeros(labels.shape, np.float32)), SPEC, mask, None)
    assert roi.info["label"] == 2 and roi.info["lesion_voxels"] == 1000


def test_a_float_labelmap_works_too():
    labels = np.zeros((20, 20, 20), np.float32)
    labels[2:6, 2:6, 2:6] = 4.0
    labels[10:18, 10:18, 10:18] = 2.0
    roi = extract_roi(geometry(np.zeros(labels.shape, np.float32)), SPEC, geometry(labels), None)
    assert roi.info["label"] == 2 and roi.info["lesion_voxels"] == 512


def test_an_explicit_label_keeps_every_voxel_of_that_label(two_lesions):
    """``--label N``: the user named the lesion; all its voxels are used (and the result says it was given)."""
    volume_path, _, mask, big = two_lesions
    roi = extract_roi(sitk.ReadImage(str(volume_path)), SPEC, mask, 1)
    assert roi.info["label"] == 1 and roi.info["label_chosen"] == "given (--label)"
    assert roi.info["lesion_voxels"] == int((sitk.GetArrayViewFromImage(mask) == 1).sum()) > int(big.sum())


def test_an_empty_mask_without_label_is_refused(tmp_path, capsys, tiny_classifier, two_lesions):
    volume_path, _, mask, _ = two_lesions
    empty = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(mask)
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    code = main(["classify", str(volume_path), "-m", str(tiny_classifier.folder), "--mask",
                 str(tmp_path / "empty.nii.gz"), "-o", str(tmp_path / "r.json"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no lesion" in err and "empty.nii.gz" in err
    assert not (tmp_path / "r.json").exists()


def test_label_zero_is_refused(two_lesions):
    from cadcore.errors import CadError

    volume_path, mask_path, mask, _ = two_lesions
    with pytest.raises(CadError, match="--label 0 is the background"):
        extract_roi(sitk.ReadImage(str(volume_path)), SPEC, mask, 0, source=str(mask_path))
