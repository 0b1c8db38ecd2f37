"""``cad interact -m BUNDLE``: a MONAI bundle runs on the prompt's region only, through its own transforms, inferer and
postprocessing (Spacingd then Invertd, as the Model Zoo's bundles do), and its labels come back on the input's exact
oblique, anisotropic grid, with the same component selection and ``--previous`` handling as a package.

The bundles are built here, tiny and deterministic: the network is a 1x1x1 ``torch.nn.Conv3d`` whose weights make it
either label every voxel (so the output shows exactly which voxels the bundle saw) or threshold the intensity (so two
separate blobs give two components, of which only the clicked one must be kept).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cadcore.errors import CadError
from cadcore.registry.bundles import read_bundle
from cadcore.segmentation.interactive import BUNDLE_EXTENT_MM, InteractiveSession, Prompts
from conftest import oblique_direction, run_cad

ROI = [48, 48, 48]
PIXDIM = [1.5, 1.5, 2.0]
SPACING = (0.9, 1.1, 3.0)
SIZE = (120, 100, 40)  # I, J, K
BLOB_A, BLOB_B = (40, 50, 20), (62, 50, 20)  # voxel centres, 19.8 mm apart along I
RADIUS_MM = 6.0


def bundle_config(roi: object = "@roi_size") -> dict:
    return {
        "imports": ["$import glob"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cpu')",
        "roi_size": ROI,
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": PIXDIM, "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0, "a_max": 100, "b_min": 0, "b_max": 1,
             "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi, "sw_batch_size": 4, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg"},
        ]},
    }


def make_bundle(folder: Path, kind: str, roi: object = "@roi_size", spatial_shape: object = (96, 96, 96)) -> Path:
    """``kind``: ``everything`` (label 1 on every voxel) or ``threshold`` (label 1 where the intensity is over 50)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(bundle_config(roi)))
    metadata = {"name": f"tiny {kind}", "version": "0.1.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "modality": "MR", "num_channels": 1,
                             "spatial_shape": list(spatial_shape)}},
        "outputs": {"pred": {"type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "blob"}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    if kind == "everything":
        weight, bias = torch.zeros(2, 1, 1, 1, 1), torch.tensor([0.0, 5.0])
    else:
        weight, bias = torch.tensor([0.0, 10.0]).reshape(2, 1, 1, 1, 1), torch.tensor([0.0, -5.0])
    torch.save({"weight": weight, "bias": bias}, folder / "models" / "model.pt")
    return folder


def ras_of(image: sitk.Image, voxel: tuple[int, int, int]) -> tuple[float, float, float]:
    x, y, z = image.TransformIndexToPhysicalPoint(voxel)
    return -x, -y, z


def click(image: sitk.Image, voxel: tuple[int, int, int], sign: str = "+") -> str:
    return f"--click={sign}" + ",".join(f"{v:.4f}" for v in ras_of(image, voxel))


@pytest.fixture
def volume(tmp_path: Path) -> tuple[sitk.Image, Path, np.ndarray, np.ndarray]:
    """Oblique, anisotropic, LPS-stored NRRD with two bright balls: the image, its path and each ball (I, J, K)."""
    index = np.indices(SIZE).astype(float)
    spacing = np.array(SPACING).reshape(3, 1, 1, 1)

    def ball(centre: tuple[int, int, int]) -> np.ndarray:
        return (((index - np.array(centre).reshape(3, 1, 1, 1)) * spacing) ** 2).sum(0) < RADIUS_MM ** 2

    a, b = ball(BLOB_A), ball(BLOB_B)
    array = np.where(a | b, 100, 0).astype(np.int16)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(SPACING)
    image.SetOrigin((-40.5, 22.25, -31.0))
    image.SetDirection(oblique_direction(25.0))
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(image, str(path))
    return image, path, a, b


def assert_exact_grid(result: sitk.Image, reference: sitk.Image) -> None:
    assert result.GetSize() == reference.GetSize()
    assert np.allclose(result.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    assert np.allclose(result.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    assert np.allclose(result.GetDirection(), reference.GetDirection(), atol=1e-6)


def as_ijk(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def test_bundle_runs_only_on_the_region_of_its_window(tmp_path, capsys, volume):
    """A bundle that labels everything: the mask is exactly the region's box (so the bundle saw only that), the box
    is the bundle's window in mm (roi_size x Spacingd pixdim) around the click, on the input's exact grid."""
    image, source, _, _ = volume
    bundle = make_bundle(tmp_path / "everything_bundle", "everything")
    output = tmp_path / "mask.nii.gz"
    code, out, err = run_cad(capsys, "interact", str(source), "-m", str(bundle), "-o", str(output), "--label", "1",
                             click(image, BLOB_A), "--device", "cpu")
    assert code == 0, err
    mask = sitk.ReadImage(str(output))
    assert_exact_grid(mask, image)
    report = json.loads(Path(f"{output}.json").read_text())
    index, size = report["region"]["index"], report["region"]["size"]
    assert report["model"] == "everything_bundle" and report["model_format"] == "bundle"
    assert all(s < n for s, n in zip(size, SIZE)), "the region must be smaller than the volume for this test"
    extent = np.array(ROI) * np.array(PIXDIM)
    assert np.all(np.abs(np.array(size) * SPACING - extent) <= 2.0 * np.array(SPACING)), (size, extent)
    expected = np.zeros(SIZE, np.uint8)
    expected[tuple(slice(i, i + s) for i, s in zip(index, size))] = 1
    assert np.array_equal(as_ijk(mask), expected)
    assert report["voxels"] == int(np.prod(size))
    assert not (bundle / "eval").exists()  # the bundle's SaveImaged was removed, as for cad segment


def test_bundle_components_are_selected_and_previous_kept_outside(tmp_path, capsys, volume):
    """A thresholding bundle sees both balls in the box; only the clicked one is kept. The previous segment is kept
    outside the region and replaced inside it (its copy of the other ball is gone). A box, because without one the
    region grows to hold the whole previous segment."""
    image, source, a, b = volume
    bundle = make_bundle(tmp_path / "threshold_bundle", "threshold")
    previous = np.zeros(SIZE, np.uint8)
    previous[b] = 1
    previous[-1, -1, -1] = 1  # far outside any region around ball A
    previous_image = sitk.GetImageFromArray(np.ascontiguousarray(previous.transpose(2, 1, 0)))
    previous_image.CopyInformation(image)
    previous_path = tmp_path / "previous.nrrd"
    sitk.WriteImage(previous_image, str(previous_path))
    output = tmp_path / "mask.nrrd"
    code, _, err = run_cad(capsys, "interact", str(source), "-m", str(bundle), "-o", str(output), "--label", "1",
                           click(image, BLOB_A), "--previous", str(previous_path), "--device", "cpu",
                           "--box", ",".join(f"{v:.4f}" for v in (*ras_of(image, (20, 30, 10)),
                                                                   *ras_of(image, (80, 70, 30)))))
    assert code == 0, err
    mask = sitk.ReadImage(str(output))
    assert_exact_grid(mask, image)
    result = as_ijk(mask).astype(bool)
    assert set(np.unique(result).tolist()) == {False, True}
    region = json.loads(Path(f"{output}.json").read_text())["region"]
    window = tuple(slice(i, i + s) for i, s in zip(region["index"], region["size"]))
    assert np.abs(np.array(region["index"]) - (20, 30, 10)).max() <= 1  # the box is the region (4-decimal RAS)
    assert np.abs(np.array(region["index"]) + region["size"] - (81, 71, 31)).max() <= 1
    assert b[window].sum() == b.sum(), "ball B must lie in the region, or this test proves nothing"
    assert 2 * (result & a).sum() / (result.sum() - 1 + a.sum()) > 0.8  # ball A found (the far voxel aside)
    assert not (result & b).any()  # ball B: a component without a click, removed (and the previous copy replaced)
    assert result[-1, -1, -1]  # outside the region, the previous segment stays


def test_bundle_session_reuses_its_region_and_refuses_uncertainty(tmp_path, volume):
    image, _, _, _ = volume
    session = InteractiveSession(read_bundle(make_bundle(tmp_path / "threshold_bundle", "threshold")), image, "cpu")
    prompts = Prompts(positive=(ras_of(image, BLOB_A),))
    first = session.segment(prompts, 1)
    again = session.segment(prompts, 1)
    assert session.network_runs == 1 and again.reused and not first.reused
    assert np.array_equal(sitk.GetArrayViewFromImage(first.mask), sitk.GetArrayViewFromImage(again.mask))
    with pytest.raises(CadError, match="--uncertainty"):
        session.segment(prompts, 1, uncertainty=True)


def test_bundle_uncertainty_is_refused_in_one_line_before_reading(tmp_path, capfd, volume):
    image, source, _, _ = volume
    bundle = make_bundle(tmp_path / "threshold_bundle", "threshold")
    output, entropy = tmp_path / "mask.nii.gz", tmp_path / "entropy.nii.gz"
    code, _, err = run_cad(capfd, "interact", str(source), "-m", str(bundle), "-o", str(output), "--label", "1",
                           click(image, BLOB_A), "--uncertainty", str(entropy))
    assert code == 2 and err.count("\n") == 1 and "--uncertainty" in err and str(bundle) in err, err
    assert not output.exists() and not entropy.exists() and not Path(f"{output}.json").exists()


def test_bundle_label_not_in_metadata_is_refused(tmp_path, capfd, volume):
    image, source, _, _ = volume
    bundle = make_bundle(tmp_path / "threshold_bundle", "threshold")
    output = tmp_path / "mask.nii.gz"
    code, _, err = run_cad(capfd, "interact", str(source), "-m", str(bundle), "-o", str(output), "--label", "3",
                           click(image, BLOB_A))
    assert code == 2 and err.count("\n") == 1 and "--label 3" in err and "metadata.json" in err, err
    assert not output.exists()


@pytest.mark.parametrize(("roi", "spatial_shape", "expected"), [
    ("@roi_size", (96, 96, 96), np.array(ROI) * np.array(PIXDIM)),  # the inferer's window, through a reference
    ("$[16] * 3", (64, 64, 32), np.array([64, 64, 32]) * np.array(PIXDIM)),  # an expression: the metadata's shape
    ("$[16] * 3", ("16*n", "16*n", "16*n"), np.full(3, BUNDLE_EXTENT_MM)),  # nothing stated plainly: the default
])
def test_bundle_window_in_mm(tmp_path, roi, spatial_shape, expected):
    image = sitk.Image([8, 8, 8], sitk.sitkInt16)
    bundle = read_bundle(make_bundle(tmp_path / "b", "everything", roi, spatial_shape))
    assert np.allclose(InteractiveSession(bundle, image, "cpu").extent_mm(), expected)
