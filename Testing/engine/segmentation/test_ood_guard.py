"""The out-of-distribution guard: the card's ``training_domain``, the warning, ``--strict``, and no false alarms.

Real data where it matters: the whole-head T1 of Slicer's sample data given to ``hippocampus-unet`` (a ~40 mm crop
model) must warn; its 42 held-out validation cases must not, and the whole-head models must not warn on either
whole-head T1. The guard never changes the labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.registry.card_reader import parse_card
from cadcore.registry.packages import find_model
from cadcore.segmentation import ood_guard
from cadcore.segmentation.predict import segment_image
from conftest import SHARED_DATA, make_tiny_segmentation_package, require_shared

WHOLE_HEAD = SHARED_DATA / "slicer_sampledata" / "BaselineVolume.nrrd"
HIPPODEEP_T1 = SHARED_DATA.parent / "weights" / "hippodeep" / "example_brain_t1.nii.gz"
WHOLE_HEAD_MODELS = ("brain-mask", "brain-structures", "brain-tissue", "brain-parcellation", "hippocampus-whole-head")
DOMAIN = {"modality": "MR", "field_of_view_mm": {"min": [30.0, 30.0, 30.0], "max": [40.0, 40.0, 40.0]},
          "spacing_mm": {"min": [1.0, 1.0, 1.0], "max": [1.0, 1.0, 1.0]},
          "intensity": {"mean": 0.0, "std": 1.0, "p01": -2.0, "p99": 2.0}, "cases": 12, "source": "test"}


def blob(shape=(24, 24, 24), spacing=(1.0, 1.0, 1.0), seed: int = 0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape)
    inside = sum(((a - n / 2) / (n / 5)) ** 2 for a, n in zip((k, j, i), shape)) < 1
    image = sitk.GetImageFromArray((rng.normal(100, 10, shape) + 20 * inside).astype(np.float32))
    image.SetSpacing(spacing)
    return image


def card_with(domain, **extra):
    base = find_model("hippocampus-unet").card.to_dict()
    base.pop("training_domain", None)
    if domain is not None:
        base["training_domain"] = domain
    base.update(extra)
    return parse_card(base, "model.json")


def test_the_card_reads_a_typed_domain_and_refuses_a_bad_one_naming_the_field():
    card = card_with(DOMAIN)
    assert card.training_domain.field_of_view_mm.max == (40.0, 40.0, 40.0)
    assert card.training_domain.intensity.p99 == 2.0 and card.training_domain.cases == 12
    assert card_with(None).training_domain is None
    shipped = find_model("hippocampus-unet").card.training_domain
    assert shipped is not None and shipped.cases == 166 and max(shipped.field_of_view_mm.max) < 80
    flat = {"mean": 0, "std": 0, "p01": 0, "p99": 1}
    for bad, field in (({**DOMAIN, "spacing_mm": {"min": [2, 2, 2], "max": [1, 1, 1]}}, "training_domain.spacing_mm"),
                       ({**DOMAIN, "intensity": flat}, "training_domain.intensity"),
                       ({**DOMAIN, "cases": 0}, "training_domain.cases"), ([1], "training_domain")):
        with pytest.raises(CadError, match=f"'{field}'"):
            card_with(bad)


def test_far_outside_warns_inside_does_not_and_finer_voxels_are_never_a_reason():
    card = card_with(DOMAIN)
    assert ood_guard.check(blob((36, 36, 36)), card) == []
    assert ood_guard.check(blob((60, 60, 60), spacing=(0.5, 0.5, 0.5)), card) == []  # 30 mm at finer voxels: fine
    [large] = ood_guard.check(blob((24, 24, 100)), card)
    assert "field of view is 100 x 24 x 24 mm, far larger" in large and "cad interact" in large
    assert "CAD AI effect" in large and not large.startswith("warning")
    [small] = ood_guard.check(blob((12, 36, 36)), card)
    assert "far smaller" in small
    [coarse] = ood_guard.check(blob((12, 12, 12), spacing=(3.0, 3.0, 3.0)), card)
    assert "far coarser" in coarse and "far larger" not in coarse
    assert ood_guard.check(blob((36, 36, 36)), card_with(None)) == []  # no domain: no guard
    assert ood_guard.check(sitk.Image([64, 64], sitk.sitkFloat32), card) == []  # refused later, in its own words


def test_modality_comes_from_the_dicom_tag_or_hounsfield_air():
    card = card_with(DOMAIN)
    tagged = blob((36, 36, 36))
    tagged.SetMetaData("0008|0060", "CT")
    assert "it is CT but the model was trained on MR" in ood_guard.check(tagged, card)[0]
    ct = sitk.GetImageFromArray(np.where(np.indices((36, 36, 36))[0] < 8, -1000.0, 40.0).astype(np.float32))
    assert ood_guard.image_modality(ct, ood_guard.subsample(ct)) == "CT"
    assert ood_guard.image_modality(blob(), ood_guard.subsample(blob())) is None
    assert ood_guard.check(tagged, card_with({**DOMAIN, "modality": "ANY"}, modality="ANY")) == []


def test_a_dicom_ct_stored_without_a_hounsfield_rescale_is_still_ct():
    """Slicer's CTHead series stores HU + 1024 (air near 0), so only its Modality tag says CT: the reader keeps it."""
    from cadcore.io.images import read_volume

    folder = require_shared(SHARED_DATA / "slicer_testing_ct_head_dicom")
    image = read_volume(folder, None)
    raw = ood_guard.subsample(image)
    assert float(np.percentile(raw, 1)) > ood_guard.HOUNSFIELD_AIR  # the voxels alone would not say CT
    assert ood_guard.image_modality(image, raw) == "CT"


def test_intensities_far_from_the_training_statistics_warn():
    card = card_with({**DOMAIN, "intensity": {"mean": 0.0, "std": 1.0, "p01": -2.0, "p99": 2.0}})
    array = np.full((36, 36, 36), 10.0, np.float32)
    array[:2] = 1000.0  # a few very bright slices: after the z-score, the 99th percentile lies far above 2
    spiky = sitk.GetImageFromArray(array)
    assert "intensities after normalisation" in ood_guard.check(spiky, card)[0]


def test_the_domain_axes_follow_the_cards_orientation():
    image = blob((20, 30, 40))  # (K, J, I) = 20, 30, 40: I is 40 mm
    image.SetDirection((0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0))  # input I runs along physical y, J along z
    facts = ood_guard.measure(image, {"orientation": "RAS"})
    assert facts.field_of_view_mm == (20.0, 40.0, 30.0)


def test_the_guard_never_changes_the_labels(tmp_path):
    plain = make_tiny_segmentation_package(tmp_path / "plain")
    guarded = make_tiny_segmentation_package(tmp_path / "guarded", training_domain=DOMAIN)
    image = blob((24, 24, 100))
    first, second = segment_image(image, plain, "cpu"), segment_image(image, guarded, "cpu")
    assert first.warnings == [] and len(second.warnings) == 1
    assert np.array_equal(sitk.GetArrayFromImage(first.labels), sitk.GetArrayFromImage(second.labels))


def test_cad_segment_warns_on_stderr_and_in_the_sidecar_and_strict_refuses(tmp_path, capfd):
    from cadcore.cli import main

    model = make_tiny_segmentation_package(tmp_path / "guarded", training_domain=DOMAIN)
    source = tmp_path / "tall.nii.gz"
    sitk.WriteImage(blob((24, 24, 100)), str(source))
    out = tmp_path / "out"
    out.mkdir()
    capfd.readouterr()
    code = main(["segment", str(source), "-m", str(model.folder), "-o", str(out / "seg.nii.gz"), "--device", "cpu"])
    captured = capfd.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert code == 0 and len(warnings) == 1 and "far larger" in warnings[0] and "warning" not in captured.out
    sidecar = json.loads((out / "seg.nii.gz.json").read_text())
    assert sidecar["warnings"] == [warnings[0][len("warning: "):]]
    strict = tmp_path / "strict"
    strict.mkdir()
    code = main(["segment", str(source), "-m", str(model.folder), "-o", str(strict / "seg.nii.gz"), "--strict"])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"cad segment: error: {source}: ")
    assert "--strict" in err and list(strict.iterdir()) == []


def test_strict_accepts_an_in_domain_scan(tmp_path, capfd):
    from cadcore.cli import main

    model = make_tiny_segmentation_package(tmp_path / "guarded", training_domain=DOMAIN)
    source = tmp_path / "fits.nii.gz"
    sitk.WriteImage(blob((36, 36, 36)), str(source))
    code = main(["segment", str(source), "-m", str(model.folder), "-o", str(tmp_path / "seg.nii.gz"), "--strict",
                 "--device", "cpu"])
    assert code == 0 and "warnings" not in json.loads((tmp_path / "seg.nii.gz.json").read_text())


# --- real data -------------------------------------------------------------------------------------------------


def test_hippocampus_unet_validation_cases_give_no_warning(hippocampus_dir):
    card = find_model("hippocampus-unet").card
    assert len(card.validation_ids) == 42
    for case in card.validation_ids:
        image = sitk.ReadImage(str(hippocampus_dir / "imagesTr" / f"{case}.nii.gz"))
        assert ood_guard.check(image, card) == [], case


def test_whole_head_t1_warns_for_hippocampus_unet_and_not_for_the_whole_head_models():
    heads = [sitk.ReadImage(str(require_shared(path))) for path in (WHOLE_HEAD, HIPPODEEP_T1)]
    for head in heads:
        [warning] = ood_guard.check(head, find_model("hippocampus-unet").card)
        assert "far larger than the training images'" in warning and "cad interact" in warning
        for model in WHOLE_HEAD_MODELS:
            assert ood_guard.check(head, find_model(model).card) == [], model


def test_strict_refuses_the_whole_head_t1_before_computing_and_writes_nothing(tmp_path, capfd):
    from cadcore.cli import main

    source = require_shared(WHOLE_HEAD)
    capfd.readouterr()
    code = main(["segment", str(source), "-m", "hippocampus-unet", "-o", str(tmp_path / "seg.nii.gz"), "--strict",
                 "--uncertainty", str(tmp_path / "u.nii.gz")])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{source}: this scan is far outside" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_whole_head_t1_with_hippocampus_unet_warns_exits_0_and_keeps_the_labels(tmp_path, capfd, monkeypatch):
    """A central 100 x 100 x 40 voxel block of the whole-head T1 (100 x 100 x 104 mm: the full head takes ~10
    minutes on 2 cores); the labels equal those of the same run with the guard switched off."""
    from cadcore.cli import main
    from cadcore.segmentation import predict

    head = sitk.ReadImage(str(require_shared(WHOLE_HEAD)))
    block = head[78:178, 78:178, 5:45]
    source = tmp_path / "head_block.nrrd"
    sitk.WriteImage(block, str(source))
    capfd.readouterr()
    code = main(["segment", str(source), "-m", "hippocampus-unet", "-o", str(tmp_path / "seg.nii.gz"),
                 "--device", "cpu"])
    captured = capfd.readouterr()
    assert code == 0
    [line] = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert "hippocampus-unet" in line and "far larger" in line
    assert json.loads(Path(f"{tmp_path / 'seg.nii.gz'}.json").read_text())["warnings"] == [line[len("warning: "):]]
    monkeypatch.setattr(predict, "guard", lambda image, card: [])
    unguarded = segment_image(block, find_model("hippocampus-unet"), "cpu")
    assert unguarded.warnings == []
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz")))
    assert np.array_equal(written, sitk.GetArrayFromImage(unguarded.labels))


def test_cad_train_records_the_domain_of_its_training_cases(tmp_path):
    from cadcore.cli import main
    from cadcore.io.datasets import load_dataset

    samples = Path(__file__).resolve().parents[3] / "sample_data" / "hippocampus"
    output = tmp_path / "trained"
    assert main(["train", "--data", str(samples), "-o", str(output), "--patch-size", "16,16,16", "--batch-size", "2",
                 "--device", "cpu", "--val-every", "1", "--spacing", "2,2,2", "--val-fraction", "0.34",
                 "--epochs", "1"]) == 0
    card = find_model(output).card
    domain = card.training_domain
    trained = [c for c in load_dataset(samples).cases if c.id not in set(card.validation_ids)]
    assert domain is not None and domain.cases == len(trained) and domain.modality == "MR"
    sizes = [sitk.ReadImage(str(c.image)).GetSize() for c in trained]  # RAS crops stored LPS: I and J keep their axes
    assert domain.field_of_view_mm.max == tuple(float(max(s[a] for s in sizes)) for a in range(3))
    assert domain.intensity is not None and ood_guard.check(sitk.ReadImage(str(trained[0].image)), card) == []
