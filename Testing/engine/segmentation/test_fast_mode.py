"""``cad segment --fast`` (the card's low fast resolution) and the card's image interpolation setting.

What must hold: the network really runs at the fast spacing (and with the fast network when the card has one), the
labels come back on the input's exact oblique, anisotropic grid, the sidecar says so, and a model without a fast
resolution (or a MONAI bundle) is refused with one line before anything is read or written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import cadcore.segmentation.predict
from cadcore.cli import main
from cadcore.errors import CadError
from cadcore.preprocessing.working_space import prepare
from cadcore.registry.networks import build_network, dynunet_spec
from cadcore.registry.packages import save_package
from conftest import make_tiny_segmentation_package, oblique_direction

FAST = {"spacing": [2.0, 2.0, 2.0]}


def oblique_anisotropic(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    array = rng.normal(100, 15, (14, 30, 26)).astype(np.float32)  # (K, J, I)
    array[4:10, 8:22, 6:20] += 90
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-20.0, 33.5, 4.25))
    image.SetDirection(oblique_direction(25.0))
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def test_fast_runs_at_the_fast_spacing_and_returns_the_input_grid(tmp_path, capsys, monkeypatch):
    package = make_tiny_segmentation_package(tmp_path / "tiny-fast", fast=FAST)
    source = oblique_anisotropic(tmp_path)
    seen: list[tuple[float, ...]] = []
    real_prepare = cadcore.segmentation.predict.prepare

    def recording_prepare(image, preprocessing):
        working = real_prepare(image, preprocessing)
        seen.append(working.grid.GetSpacing())
        return working

    monkeypatch.setattr(cadcore.segmentation.predict, "prepare", recording_prepare)
    output = tmp_path / "fast.seg.nrrd"
    assert main(["segment", str(source), "-m", str(package.folder), "-o", str(output), "--device", "cpu",
                 "--fast"]) == 0, capsys.readouterr().err
    assert seen == [pytest.approx((2.0, 2.0, 2.0))]
    result, original = sitk.ReadImage(str(output)), sitk.ReadImage(str(source))
    assert result.GetSize() == original.GetSize()
    for a, b in ((result.GetSpacing(), original.GetSpacing()), (result.GetOrigin(), original.GetOrigin()),
                 (result.GetDirection(), original.GetDirection())):
        assert np.allclose(a, b, atol=1e-6)
    sidecar = json.loads(Path(f"{output}.json").read_text())
    assert sidecar["fast"] is True and sidecar["working_spacing"] == pytest.approx([2.0, 2.0, 2.0])


def test_fast_uses_the_cards_own_fast_network(tmp_path, capsys):
    """A ``fast.network`` section is loaded from the ``fast.`` weights; its output bias decides every voxel."""
    spec = dynunet_spec(1, 3, [4, 8, 16], [1, 2, 2])
    torch.manual_seed(0)
    full = build_network(spec).state_dict()
    fast = {k: v.clone() for k, v in build_network(spec).state_dict().items()}
    fast["output_block.conv.conv.weight"].zero_()
    fast["output_block.conv.conv.bias"].copy_(torch.tensor([-50.0, -50.0, 50.0]))  # label 2 everywhere
    template = make_tiny_segmentation_package(tmp_path / "template")
    card = {**template.card.raw, "id": "tiny-two-nets",
            "fast": {**FAST, "network": spec, "inference": {"patch_size": [16, 16, 16]}}}
    package = save_package(tmp_path / "tiny-two-nets", card, {**full, **{f"fast.{k}": v for k, v in fast.items()}})
    source = oblique_anisotropic(tmp_path)
    output = tmp_path / "fast.nii.gz"
    assert main(["segment", str(source), "-m", str(package.folder), "-o", str(output), "--device", "cpu",
                 "--fast"]) == 0, capsys.readouterr().err
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(output))))) == {2}
    full = tmp_path / "full.nii.gz"  # without --fast the main network runs; the fast. weights are left alone
    assert main(["segment", str(source), "-m", str(package.folder), "-o", str(full), "--device", "cpu"]) == 0, \
        capsys.readouterr().err
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(full))))) != {2}


def test_fast_without_a_fast_resolution_is_refused_before_reading(tmp_path, capsys):
    package = make_tiny_segmentation_package(tmp_path / "tiny-plain")
    output = tmp_path / "out.nii.gz"
    code = main(["segment", str(tmp_path / "missing.nii.gz"), "-m", str(package.folder), "-o", str(output),
                 "--fast"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "names no fast resolution" in err and "tiny-plain" in err
    assert not output.exists() and not Path(f"{output}.json").exists()


def test_evaluate_fast_refuses_a_model_without_fast_resolution(tmp_path, capsys):
    package = make_tiny_segmentation_package(tmp_path / "tiny-plain")
    report = tmp_path / "r.json"
    assert main(["evaluate", "-m", str(package.folder), "--data", str(tmp_path), "-o", str(report), "--fast"]) == 2
    assert "names no fast resolution" in capsys.readouterr().err and not report.exists()


def test_card_bspline_interpolation_is_simpleitks():
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1, (8, 10, 12)).astype(np.float32))
    spec = {"orientation": "RAS", "spacing": [0.7, 0.7, 0.7], "interpolation": "bspline", "normalization": {}}
    working = prepare(image, spec)
    expected = sitk.Resample(image, working.grid, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    assert np.allclose(sitk.GetArrayViewFromImage(working.grid), sitk.GetArrayViewFromImage(expected), atol=1e-4)


@pytest.mark.parametrize(("direction", "new_spacing"), [
    ((1.0, 0, 0, 0, 1, 0, 0, 0, 1), [1.5, 1.5, 2.0]),
    ((0, -1.0, 0, 1, 0, 0, 0, 0, -1), [0.6, 1.7, 3.0]),  # permuted and flipped axes
], ids=["lps", "permuted-flipped"])
def test_card_linear_interpolation_gives_monai_spacingds_array(tmp_path, direction, new_spacing):
    """"linear" = the spleen bundle's Orientationd(RAS) + Spacingd(bilinear): same grid (size, first voxel centre),
    same border values, same array, on an anisotropic int16 CT-like volume read from NIfTI by both. (For an oblique
    grid MONAI's Spacingd moves the origin by its own rule; ours keeps the first voxel centre, so only axis-aligned
    inputs, i.e. almost every CT, give bit-equal arrays.)"""
    import monai.transforms as mt

    rng = np.random.default_rng(3)
    array = np.clip(rng.normal(40, 300, (23, 37, 41)), -1024, 3000).astype(np.int16)  # (K, J, I)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 1.3))
    image.SetOrigin((-30.5, 12.0, 101.25))
    image.SetDirection(direction)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    spec = {"orientation": "RAS", "spacing": new_spacing, "interpolation": "linear",
            "normalization": {"kind": "ct", "window": [-57, 164]}}
    ours = prepare(sitk.ReadImage(str(path)), spec).array
    load = mt.Compose([mt.LoadImaged("image", image_only=True), mt.EnsureChannelFirstd("image"),
                       mt.Orientationd("image", axcodes="RAS"),
                       mt.Spacingd("image", pixdim=new_spacing, mode="bilinear"),
                       mt.ScaleIntensityRanged("image", -57, 164, 0.0, 1.0, clip=True)])
    theirs = load({"image": str(path)})["image"][0].numpy()
    assert ours.shape == theirs.shape
    assert np.allclose(ours, theirs, atol=1e-5)


def test_unknown_interpolation_is_a_one_line_error(tmp_path, capsys):
    package = make_tiny_segmentation_package(tmp_path / "tiny-cubic")
    card = json.loads((package.folder / "model.json").read_text())
    card["preprocessing"]["interpolation"] = "cubic"  # a hand-edited card: the engine never writes one
    (package.folder / "model.json").write_text(json.dumps(card))
    code = main(["segment", str(oblique_anisotropic(tmp_path)), "-m", str(package.folder), "-o",
                 str(tmp_path / "o.nii.gz"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "'preprocessing.interpolation'" in err and err.count("\n") == 1
    assert str(package.folder / "model.json") in err and not (tmp_path / "o.nii.gz").exists()
    with pytest.raises(CadError, match="interpolation"):  # nor can training save such a card
        make_tiny_segmentation_package(tmp_path / "tiny-cubic-2", preprocessing={**card["preprocessing"]})
