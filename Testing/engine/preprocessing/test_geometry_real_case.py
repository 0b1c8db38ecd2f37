"""Geometry is sacred: the shipped hippocampus model on a real case whose header was rotated, stored with permuted
and flipped axes (LPS NRRD) and resampled to anisotropic voxels. The output must sit on exactly the input's grid and
still overlap the (identically transformed) truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.cli import main
from cadcore.registry.locations import SHIPPED_MODELS
from conftest import oblique_direction

REPO = Path(__file__).resolve().parents[3]
CASE = "hippocampus_015"  # in the shipped model's validation split: never trained on
IMAGE = REPO / "sample_data" / "hippocampus" / "imagesTr" / f"{CASE}.nii.gz"
LABEL = REPO / "sample_data" / "hippocampus" / "labelsTr" / f"{CASE}.nii.gz"
MODEL = SHIPPED_MODELS / "hippocampus-unet"


def awkward_header(image: sitk.Image, spacing: tuple[float, float, float], interpolator: int) -> sitk.Image:
    """Same voxels, new storage order (permuted + flipped) and an oblique header, then anisotropic resampling."""
    stored = sitk.Flip(sitk.PermuteAxes(image, [1, 0, 2]), [False, True, False])  # physical content unchanged
    stored.SetDirection(tuple((np.array(oblique_direction(25.0)).reshape(3, 3) @
                               np.array(stored.GetDirection()).reshape(3, 3)).ravel()))
    stored.SetOrigin((31.5, -12.25, 104.0))
    size = [int(round(n * s / t)) for n, s, t in zip(stored.GetSize(), stored.GetSpacing(), spacing)]
    return sitk.Resample(stored, size, sitk.Transform(), interpolator, stored.GetOrigin(), spacing,
                         stored.GetDirection(), 0.0, stored.GetPixelID())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.mark.skipif(not (MODEL / "model.json").exists(), reason="shipped hippocampus-unet not present")
@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_oblique_anisotropic_real_case(tmp_path, capsys, suffix):
    spacing = (1.0, 0.8, 1.6)
    image = awkward_header(sitk.ReadImage(str(IMAGE), sitk.sitkFloat32), spacing, sitk.sitkLinear)
    truth = awkward_header(sitk.ReadImage(str(LABEL), sitk.sitkUInt8), spacing, sitk.sitkNearestNeighbor)
    source = tmp_path / f"oblique{suffix}"
    sitk.WriteImage(image, str(source))
    stored = sitk.ReadImage(str(source))
    assert abs(np.array(stored.GetDirection()).reshape(3, 3)).max() < 0.99  # really oblique on disk
    output = tmp_path / "seg.seg.nrrd"
    code = main(["segment", str(source), "-m", "hippocampus-unet", "-o", str(output), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    result = sitk.ReadImage(str(output))
    assert result.GetSize() == stored.GetSize()
    assert result.GetSpacing() == pytest.approx(stored.GetSpacing(), abs=1e-6)
    assert result.GetOrigin() == pytest.approx(stored.GetOrigin(), abs=1e-6)
    assert result.GetDirection() == pytest.approx(stored.GetDirection(), abs=1e-6)
    predicted, expected = sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(truth)
    for value in (1, 2):
        assert dice(predicted == value, expected == value) > 0.75, f"label {value} lost after the header change"
