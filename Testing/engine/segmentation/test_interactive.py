"""``cad interact`` and :class:`InteractiveSession` with the shipped hippocampus model on the sample case: one click
segments the structure on the input's exact grid (also oblique, LPS-stored, and inside a much larger volume the model
was never trained on), negative clicks and scribbles correct it, the previous segment is kept outside the region, the
session reuses its region's network output, the uncertainty map lies on the input grid, and bad prompts are refused
in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.cli import main
from cadcore.registry.packages import find_model
from cadcore.segmentation.interactive import InteractiveSession, Prompts

SAMPLES = Path(__file__).resolve().parents[3] / "sample_data" / "hippocampus"
CASE = SAMPLES / "imagesTr" / "hippocampus_015.nii.gz"
TRUTH = SAMPLES / "labelsTr" / "hippocampus_015.nii.gz"


def centre_click(label: sitk.Image, value: int) -> tuple[float, float, float]:
    """RAS mm of the label's voxel nearest its centroid (a click a user would make)."""
    hits = np.argwhere(sitk.GetArrayViewFromImage(label) == value)
    voxel = hits[np.argmin(((hits - hits.mean(0)) ** 2).sum(1))]
    x, y, z = label.TransformIndexToPhysicalPoint([int(v) for v in voxel[::-1]])
    return -x, -y, z


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-7))


def interact(tmp_path: Path, source: Path, *extra: str) -> tuple[int, Path]:
    output = tmp_path / "mask.nii.gz"
    code = main(["interact", str(source), "-m", "hippocampus-unet", "-o", str(output), "--device", "cpu", *extra])
    return code, output


@pytest.fixture(scope="module")
def session():
    return InteractiveSession(find_model("hippocampus-unet"), sitk.ReadImage(str(CASE)), "cpu")


def test_one_click_segments_the_structure_on_the_input_grid(tmp_path, capsys):
    truth = sitk.ReadImage(str(TRUTH))
    click = centre_click(truth, 1)
    code, output = interact(tmp_path, CASE, "--label", "1", f"--click=+{click[0]},{click[1]},{click[2]}")
    assert code == 0, capsys.readouterr().err
    mask = sitk.ReadImage(str(output))
    assert same_grid(mask, sitk.ReadImage(str(CASE)))
    assert set(np.unique(sitk.GetArrayViewFromImage(mask)).tolist()) <= {0, 1}
    assert dice(sitk.GetArrayFromImage(mask) > 0, sitk.GetArrayFromImage(truth) == 1) > 0.8
    report = json.loads(Path(f"{output}.json").read_text())
    assert report["label"] == 1 and report["prompts"]["positive"] == [list(click)] and report["voxels"] > 0


def test_oblique_lps_stored_input_keeps_its_grid(tmp_path, capsys):
    """The same case with an oblique, flipped direction and anisotropic spacing, stored as NRRD: the click moves
    with the header, and the mask lies on that header's grid."""
    image, truth = sitk.ReadImage(str(CASE)), sitk.ReadImage(str(TRUTH))
    angle = np.deg2rad(23.0)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    for volume in (image, truth):
        volume.SetDirection(tuple((rotation @ np.diag([1.0, -1.0, 1.0])).ravel()))
        volume.SetSpacing((0.9, 1.2, 1.1))
        volume.SetOrigin((-20.0, 35.5, -7.25))
    source = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(source))
    click = centre_click(truth, 2)
    code, output = interact(tmp_path, source, "--label", "2", f"--click=+{click[0]},{click[1]},{click[2]}")
    assert code == 0, capsys.readouterr().err
    mask = sitk.ReadImage(str(output))
    assert same_grid(mask, image)
    assert dice(sitk.GetArrayFromImage(mask) > 0, sitk.GetArrayFromImage(truth) == 2) > 0.7


def test_inside_a_much_larger_volume_only_the_region_runs(tmp_path):
    """A crop-trained model given a volume ten times larger (a stand-in for a whole head: the crop mirrored around
    itself, so there is brain-like tissue all around): the click's region is what the network sees, and the
    structure is still found."""
    image, truth = sitk.ReadImage(str(CASE), sitk.sitkFloat32), sitk.ReadImage(str(TRUTH))
    pad = ((20, 25), (40, 40), (30, 45))  # (K, J, I)
    big = np.pad(sitk.GetArrayFromImage(image), pad, mode="symmetric")
    big_truth = np.pad(sitk.GetArrayFromImage(truth), pad)
    whole, whole_truth = sitk.GetImageFromArray(big), sitk.GetImageFromArray(big_truth)
    for volume in (whole, whole_truth):  # the anatomy keeps its orientation: the model knows left-right flips only
        volume.SetDirection(image.GetDirection())
        volume.SetSpacing(image.GetSpacing())
    session = InteractiveSession(find_model("hippocampus-unet"), whole, "cpu")
    result = session.segment(Prompts(positive=(centre_click(whole_truth, 1),)), 1)
    assert np.prod(result.region[1]) < 0.15 * big.size
    assert dice(sitk.GetArrayFromImage(result.mask) > 0, big_truth == 1) > 0.8


def test_negative_click_removes_and_previous_is_kept_outside_the_region(session):
    truth = sitk.ReadImage(str(TRUTH))
    click = centre_click(truth, 1)
    first = session.segment(Prompts(positive=(click,)), 1)
    assert sitk.GetArrayViewFromImage(first.mask).sum() > 0
    removed = session.segment(Prompts(positive=(click,), negative=(click,)), 1)
    assert sitk.GetArrayViewFromImage(removed.mask).sum() == 0
    previous = sitk.Image(truth.GetSize(), sitk.sitkUInt8)
    previous.CopyInformation(truth)
    previous[0, 0, 0] = 1  # a stroke of the user's far from the click, outside the region the network looks at
    kept = session.segment(Prompts(box=((click[0] - 3, click[1] - 3, click[2] - 3),
                                        (click[0] + 3, click[1] + 3, click[2] + 3)), previous=previous), 1)
    assert kept.mask[0, 0, 0] == 1 and kept.region[0] != (0, 0, 0)


def test_scribbles_force_voxels_in_and_out(session):
    truth = sitk.ReadImage(str(TRUTH))
    labels = sitk.GetArrayFromImage(truth)
    strokes = np.zeros(labels.shape, np.uint8)
    strokes[labels == 1] = 1
    inside = np.argwhere(labels == 1)[:5]
    strokes[tuple(inside.T)] = 2
    scribble = sitk.GetImageFromArray(strokes)
    scribble.CopyInformation(truth)
    result = sitk.GetArrayFromImage(session.segment(Prompts(scribble=scribble), 1).mask)
    assert result[tuple(inside.T)].sum() == 0 and result[(labels == 1) & (strokes == 1)].all()


def test_the_session_reuses_its_regions_network_output(session):
    click = centre_click(sitk.ReadImage(str(TRUTH)), 2)
    session.segment(Prompts(positive=(click,)), 2)
    runs = session.network_runs
    again = session.segment(Prompts(positive=(click,)), 2)
    assert session.network_runs == runs and again.reused


def test_the_region_cache_is_bounded_least_recently_used_first(session):
    """A long annotation session keeps at most ``cache_bytes`` of region outputs: the region prompted longest ago goes
    first, a region just used stays."""
    bounded = InteractiveSession(session.package, session.image, "cpu", cache_bytes=1)  # room for the newest only
    click = centre_click(sitk.ReadImage(str(TRUTH)), 2)
    box = ((click[0] - 3, click[1] - 3, click[2] - 3), (click[0] + 3, click[1] + 3, click[2] + 3))
    bounded.segment(Prompts(positive=(click,)), 2)
    bounded.segment(Prompts(box=box), 2)  # another region: the first one is dropped
    assert len(bounded.cache) == 1 and bounded.network_runs == 2
    assert bounded.segment(Prompts(box=box), 2).reused
    assert not bounded.segment(Prompts(positive=(click,)), 2).reused and bounded.network_runs == 3
    roomy = InteractiveSession(session.package, session.image, "cpu")
    roomy.segment(Prompts(positive=(click,)), 2)
    roomy.segment(Prompts(box=box), 2)
    assert roomy.segment(Prompts(positive=(click,)), 2).reused and len(roomy.cache) == 2


def test_uncertainty_map_on_the_input_grid_and_a_suggested_click(tmp_path, capsys):
    click = centre_click(sitk.ReadImage(str(TRUTH)), 1)
    uncertainty = tmp_path / "entropy.nrrd"
    code, output = interact(tmp_path, CASE, "--label", "1", f"--click=+{click[0]},{click[1]},{click[2]}",
                            "--uncertainty", str(uncertainty))
    assert code == 0, capsys.readouterr().err
    entropy = sitk.ReadImage(str(uncertainty))
    assert same_grid(entropy, sitk.ReadImage(str(CASE)))
    values = sitk.GetArrayViewFromImage(entropy)
    assert 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0
    suggestion = json.loads(Path(f"{output}.json").read_text())["suggested_click"]
    image = sitk.ReadImage(str(CASE))
    index = image.TransformPhysicalPointToContinuousIndex((-suggestion[0], -suggestion[1], suggestion[2]))
    assert all(-0.5 <= i <= n - 0.5 for i, n in zip(index, image.GetSize()))


@pytest.mark.parametrize(("extra", "words"), [
    (["--label", "1"], "positive click"),
    (["--label", "1", "--click=-18,36,12"], "positive click"),
    (["--label", "1", "--click=+500,500,500"], "outside the volume"),
    (["--label", "7", "--click=+18,36,12"], "--label 7"),
])
def test_bad_prompts_are_one_line(tmp_path, capfd, extra, words):
    code, output = interact(tmp_path, CASE, *extra)
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and words in err, err
    assert not output.exists() and not Path(f"{output}.json").exists()
