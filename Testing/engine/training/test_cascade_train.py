"""``cad train --cascade``: both stages trained on the same split, crops that hold the target, one package that
``cad segment`` runs coarse → ROI → fine, and bad input refused in one line before anything is written.

Data: small synthetic heads (anisotropic, one of them oblique) with one bright ball each, one case without any
target. The networks are tiny and train for a few epochs: these tests check the plumbing, not the accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cadcore.cli import main
from cadcore.registry.packages import find_model
from cadcore.training.cascade import crop_region, default_coarse_spacing, target_box
from cadcore.training.config import CascadeOptions
from conftest import make_tiny_segmentation_package, oblique_direction

SPACING = (1.0, 1.0, 2.0)
SIZE = (40, 36, 16)  # I, J, K
TINY = ["--device", "cpu", "--seed", "0", "--batch-size", "2", "--val-every", "2", "--epochs", "2",
        "--spacing", "1,1,2", "--patch-size", "16,16,8", "--filters", "4,8,16",
        "--coarse-spacing", "4,4,4", "--coarse-patch-size", "12,12,8", "--coarse-filters", "4,8,16",
        "--coarse-epochs", "2", "--roi-margin", "4"]


@pytest.fixture(autouse=True)
def one_cpu_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_case(index: int, with_target: bool = True) -> tuple[sitk.Image, sitk.Image]:
    """A noisy head-like block with a bright ball (radius 4 mm) somewhere inside; (image, label) on one grid."""
    rng = np.random.default_rng(index)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(SIZE, SPACING)], indexing="ij"), -1)
    image = rng.normal(10, 3, SIZE).astype(np.float32)
    image[4:-4, 4:-4, 2:-2] += 90
    label = np.zeros(SIZE, np.uint8)
    if with_target:
        centre = np.array([rng.uniform(10, 30), rng.uniform(10, 26), rng.uniform(8, 22)])
        ball = np.linalg.norm(grid - centre, axis=-1) <= 4.0
        image[ball] += 120
        label[ball] = 1
    pair = []
    for array in (image, label):
        volume = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        volume.SetSpacing(SPACING)
        volume.SetOrigin((-20.0 + index, 5.0, 30.0))
        if index == 1:
            volume.SetDirection(oblique_direction(10.0))
        pair.append(volume)
    return pair[0], pair[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six cases; case 5 has no target; cases 4 and 5 are the explicit validation split (as a split by patient)."""
    root = tmp_path_factory.mktemp("balls")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    entries = []
    for index in range(6):
        image, label = synthetic_case(index, with_target=index != 5)
        sitk.WriteImage(image, str(root / "images" / f"ball_{index}.nii.gz"))
        sitk.WriteImage(label, str(root / "labels" / f"ball_{index}.nii.gz"))
        entries.append({"image": f"./images/ball_{index}.nii.gz", "label": f"./labels/ball_{index}.nii.gz"})
    spec = {"name": "balls", "labels": {"0": "background", "1": "ball"}, "modality": {"0": "MR"},
            "training": entries[:4], "validation": entries[4:]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


@pytest.fixture(scope="module")
def cascade_package(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("trained") / "ball-cascade"
    torch.set_num_threads(1)
    assert main(["train", "--cascade", "--data", str(dataset), "-o", str(output), *TINY]) == 0
    return output


def test_package_holds_both_stages_and_verifies(cascade_package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = find_model(cascade_package)
    card = package.card.raw
    assert card["id"] == "ball-cascade" and card["task"] == "segmentation"
    assert card["preprocessing"]["spacing"] == [1.0, 1.0, 2.0]
    assert card["inference"]["patch_size"] == [16, 16, 8]
    coarse = card["cascade"]["coarse"]
    assert coarse["preprocessing"]["spacing"] == [4.0, 4.0, 4.0]
    assert coarse["inference"]["patch_size"] == [12, 12, 8]
    assert coarse["network"]["params"]["filters"] == [4, 8, 16]
    assert card["cascade"]["margin_mm"] == 4.0
    stages = card["training"]["stages"]
    assert stages["coarse"]["epochs"] == 2 and stages["fine"]["epochs"] == 2
    assert card["training"]["split"]["val"] == ["ball_4", "ball_5"]
    assert stages["coarse"]["split"]["val"] == stages["fine"]["split"]["val"] == ["ball_4", "ball_5"]
    keys = list(package.load_state_dict())
    assert keys and all(k.startswith(("coarse.", "fine.")) for k in keys)
    assert any(k.startswith("coarse.") for k in keys) and any(k.startswith("fine.") for k in keys)
    assert main(["models", "verify", str(cascade_package)]) == 0
    assert "weights OK" in capsys.readouterr().out


def test_crops_keep_the_split_the_target_and_the_geometry(cascade_package: Path, dataset: Path) -> None:
    spec = json.loads((cascade_package / "cascade" / "dataset.json").read_text())
    names = [[Path(e["image"]).name for e in spec[k]] for k in ("training", "validation")]
    assert names == [[f"ball_{i}.nii.gz" for i in range(4)], ["ball_4.nii.gz", "ball_5.nii.gz"]]
    crops = spec["cascade_crops"]["cases"]
    assert crops["ball_5"]["target"] is False and all(crops[f"ball_{i}"]["target"] for i in range(5))
    for index in range(6):
        original = sitk.ReadImage(str(dataset / "labels" / f"ball_{index}.nii.gz"))
        image = sitk.ReadImage(str(cascade_package / "cascade" / "imagesTr" / f"ball_{index}.nii.gz"))
        label = sitk.ReadImage(str(cascade_package / "cascade" / "labelsTr" / f"ball_{index}.nii.gz"))
        assert image.GetSize() == label.GetSize() == tuple(crops[f"ball_{index}"]["size"])
        assert np.allclose(image.GetOrigin(), label.GetOrigin())
        assert np.allclose(image.GetDirection(), original.GetDirection(), atol=1e-6)
        start = crops[f"ball_{index}"]["index"]
        assert np.allclose(image.GetOrigin(), original.TransformIndexToPhysicalPoint(start), atol=1e-4)
        # the whole target is inside the crop, and the crop is no bigger than box + 1.5 x margin per side
        assert sitk.GetArrayFromImage(label).sum() == sitk.GetArrayFromImage(original).sum()
        box = target_box(original)
        if box is not None:
            slack = np.ceil(1.5 * 4.0 / np.array(SPACING)) + 1
            assert np.all(np.array(label.GetSize()) <= box[1] - box[0] + 1 + 2 * slack)


def test_segment_runs_the_cascade_on_the_input_grid(cascade_package: Path, dataset: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    source = dataset / "images" / "ball_1.nii.gz"  # the oblique one
    output = tmp_path / "seg.nii.gz"
    assert main(["segment", str(source), "-m", str(cascade_package), "-o", str(output), "--device", "cpu"]) == 0
    labels, reference = sitk.ReadImage(str(output)), sitk.ReadImage(str(source))
    assert labels.GetSize() == reference.GetSize()
    assert np.allclose(labels.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    assert np.allclose(labels.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert np.allclose(labels.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    cascade = json.loads(Path(f"{output}.json").read_text())["cascade"]
    assert isinstance(cascade["used"], bool)
    if cascade["used"]:
        assert 0 < cascade["roi_fraction"] <= 1
    else:
        assert "whole volume" in cascade["fallback"]


def test_evaluate_split_val_scores_the_held_out_whole_volumes(cascade_package: Path, dataset: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Crop ids are case ids, so ``cad evaluate --split val`` finds the validation cases among the whole volumes."""
    report = tmp_path / "report.json"
    assert main(["evaluate", "-m", str(cascade_package), "--data", str(dataset), "--split", "val", "-o", str(report),
                 "--device", "cpu"]) == 0
    assert sorted(c["id"] for c in json.loads(report.read_text())["cases"]) == ["ball_4", "ball_5"]


def test_resume_reuses_finished_stages(cascade_package: Path, dataset: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished stage is not trained again by --resume; the package is assembled the same way."""
    import cadcore.training.cascade

    def no_training(*_: object) -> None:
        raise AssertionError("--resume retrained a finished stage")

    monkeypatch.setattr(cadcore.training.cascade, "train", no_training)
    before = find_model(cascade_package).card.raw["weights"]["sha256"]
    assert main(["train", "--cascade", "--data", str(dataset), "-o", str(cascade_package), "--resume", *TINY]) == 0
    assert find_model(cascade_package).card.raw["weights"]["sha256"] == before
    capsys.readouterr()
    assert main(["train", "--cascade", "--data", str(dataset), "-o", str(cascade_package), *TINY]) == 2
    assert "already exists" in capsys.readouterr().err


def test_init_starts_the_fine_stage_only(dataset: Path, tmp_path: Path) -> None:
    """``--init`` with ``--cascade``: the fine stage takes the parent's architecture and weights, the coarse stage
    keeps its own (fresh) network."""
    parent = make_tiny_segmentation_package(tmp_path / "parent", seed=3)  # DynUNet 4-8-16, three classes
    output = tmp_path / "child"
    assert main(["train", "--cascade", "--data", str(dataset), "-o", str(output), *TINY, "--epochs", "1",
                 "--coarse-epochs", "1", "--coarse-filters", "8,16,32", "--coarse-patch-size", "12,12,8",
                 "--init", str(parent.folder)]) == 0
    card = find_model(output).card.raw
    assert card["training"]["stages"]["fine"]["parent"]["parent"] == "parent"
    assert "parent" not in card["training"]["stages"]["coarse"]
    assert card["network"]["params"]["filters"] == [4, 8, 16] and card["network"]["params"]["out_channels"] == 2
    assert card["cascade"]["coarse"]["network"]["params"]["filters"] == [8, 16, 32]


def without_coarse_settings(arguments: list[str]) -> list[str]:
    """TINY without its --coarse-spacing/-patch-size/-filters (a cascade --init supplies its own)."""
    out, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument in ("--coarse-spacing", "--coarse-patch-size", "--coarse-filters"):
            skip = True
        else:
            out.append(argument)
    return out


def test_init_from_a_cascade_starts_each_stage_from_its_own_stage(cascade_package: Path, dataset: Path,
                                                                   tmp_path: Path) -> None:
    """Fine-tuning a cascade (CADSegment's *Improve model* on brain-tumour-cascade): the coarse stage starts from
    the parent's coarse weights at its coarse spacing and patch, the fine stage from its fine weights. With a zero
    learning rate the child's weights are the parent's, tensor for tensor: every one was loaded into its stage."""
    output = tmp_path / "child"
    assert main(["train", "--cascade", "--data", str(dataset), "-o", str(output),
                 *without_coarse_settings(TINY), "--epochs", "1", "--coarse-epochs", "1", "--lr", "0",
                 "--init", str(cascade_package)]) == 0
    parent, child = find_model(cascade_package), find_model(output)
    card = child.card.raw
    assert card["training"]["parent"]["parent"] == "ball-cascade" and "parent_stage" not in card["training"]["parent"]
    stages = card["training"]["stages"]
    assert stages["coarse"]["parent"]["parent_stage"] == "coarse" and stages["fine"]["parent"]["parent_stage"] == "fine"
    assert card["cascade"]["coarse"]["preprocessing"]["spacing"] == [4.0, 4.0, 4.0]  # the parent's, not the default
    assert card["cascade"]["coarse"]["inference"]["patch_size"] == [12, 12, 8]
    for stage in ("coarse", "fine"):
        report = json.loads((output / "cascade" / stage / "init_report.json").read_text())
        assert report["loaded"] > 0 and report["reinitialised"] == [] and report["parent_stage"] == stage
    parent_state, child_state = parent.load_state_dict(), child.load_state_dict()
    assert parent_state.keys() == child_state.keys()
    assert all(torch.equal(parent_state[k], child_state[k]) for k in parent_state)


def test_init_from_a_cascade_refuses_other_coarse_filters(cascade_package: Path, dataset: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "child"
    assert main(["train", "--cascade", "--data", str(dataset), "-o", str(output), *without_coarse_settings(TINY),
                 "--coarse-filters", "8,16,32", "--init", str(cascade_package)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--coarse-filters" in error[0] and "[4, 8, 16]" in error[0]
    assert not output.exists()


@pytest.mark.parametrize("extra, message", [
    (["--roi-margin", "-1"], "--roi-margin"),
    (["--coarse-spacing", "4,4"], "--coarse-spacing"),
    (["--coarse-patch-size", "10,12,8"], "divisible"),
    (["--patch-size", "16,16,6"], "divisible"),
    (["--filters", "4,8", "--patch-size", "16,16,8"], "DynUNet"),
    (["--task", "classify"], "segmentation models only"),
])
def test_bad_input_fails_in_one_line_and_writes_nothing(dataset: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], extra: list[str],
                                                         message: str) -> None:
    output = tmp_path / "never"
    assert main(["train", "--cascade", "--data", str(dataset), "-o", str(output), *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not output.exists()


def test_cascade_options_without_cascade_are_refused(dataset: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "never"
    assert main(["train", "--data", str(dataset), "-o", str(output), "--coarse-epochs", "3", "--roi-margin", "5"]) == 2
    assert "--coarse-epochs, --roi-margin only apply to --cascade" in capsys.readouterr().err
    assert not output.exists()


def test_a_dataset_without_validation_cases_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, label = synthetic_case(0)
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))
    sitk.WriteImage(label, str(tmp_path / "a_label.nii.gz"))
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "a.nii.gz", "label": "a_label.nii.gz"}]}))
    output = tmp_path / "never"
    assert main(["train", "--cascade", "--data", str(tmp_path), "-o", str(output), *TINY]) == 2
    assert "validation" in capsys.readouterr().err
    assert not output.exists()


def test_a_label_on_another_grid_is_refused_before_training(dataset: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The crops are cut before any training, so a bad label fails at once, and what was cut is removed again."""
    spec = json.loads((dataset / "dataset.json").read_text())
    _, label = synthetic_case(0)
    sitk.WriteImage(label[:, :, :-1], str(tmp_path / "short.nii.gz"))
    spec["validation"][0]["label"] = str(tmp_path / "short.nii.gz")
    for entry in spec["training"] + spec["validation"]:
        entry["image"] = str(dataset / entry["image"])
        entry["label"] = str(dataset / entry["label"]) if entry["label"].startswith(".") else entry["label"]
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    output = tmp_path / "never"
    assert main(["train", "--cascade", "--data", str(tmp_path / "dataset.json"), "-o", str(output), *TINY]) == 2
    err = capsys.readouterr().err
    assert "label grid differs" in err and len(err.strip().splitlines()) == 1, err
    assert not output.exists()


def test_defaults_and_crop_arithmetic() -> None:
    """The default coarse spacing keeps thick slices as they are; crops are box + margin (in mm), clipped."""
    assert default_coarse_spacing([0.86, 0.86, 6.5]) == [3.44, 3.44, 6.5]
    assert default_coarse_spacing([1.0, 1.0, 1.0]) == [4.0, 4.0, 4.0]
    assert CascadeOptions.from_values({"roi_margin": 5.0, "roi_jitter": None, "epochs": 3}).roi_jitter == 0.5
    image = sitk.Image([20, 20, 10], sitk.sitkUInt8)
    image.SetSpacing((0.5, 1.0, 2.0))
    box = (np.array([8, 8, 4]), np.array([10, 9, 5]))
    index, size = crop_region(image, box, np.full((2, 3), 2.0))
    assert index == [4, 6, 3] and size == [11, 6, 4]
    index, size = crop_region(image, box, np.full((2, 3), 100.0))
    assert index == [0, 0, 0] and size == [20, 20, 10]


def test_interactive_init_from_a_cascade_starts_from_its_fine_stage(cascade_package: Path, dataset: Path,
                                                                    tmp_path: Path) -> None:
    """A user's cascade becomes interactive: ``--interactive --init CASCADE`` takes the fine stage (the one a prompt
    runs), not a refusal asking for ``--cascade``."""
    output = tmp_path / "guided"
    assert main(["train", "--interactive", "--init", str(cascade_package), "--allow-overlap", "--data", str(dataset),
                 "-o", str(output), *TINY[:12]]) == 0  # the fine stage's flags only
    report = json.loads((output / "init_report.json").read_text())
    assert report["parent_stage"] == "fine" and report["loaded"] > 0
