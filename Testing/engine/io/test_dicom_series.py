"""DICOM series chosen by content, slices checked before reading, the series recorded in the sidecar (issue 14).

Series are written here slice by slice with SimpleITK, with the tags a scanner or a segmentation tool would set, so
every case is a real folder of DICOM files; the shared public series add a real CT and a real study whose tumour mask
series ties with its images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_slices

from cadcore.errors import CadError
from cadcore.io.dicom import SERIES_DESCRIPTION_KEY, SERIES_UID_KEY
from cadcore.io.images import read_volume
from conftest import SHARED_DATA, oblique_direction, require_shared, run_segment_fd

IMAGE_UID, MASK_UID, OTHER_UID = "1.2.826.0.1.3680043.9.7.1", "1.2.826.0.1.3680043.9.7.2", "1.2.826.0.1.3680043.9.7.3"


def write_series(folder: Path, uid: str, description: str, slices: int = 12, *, image_type: str = "ORIGINAL\\PRIMARY",
                 modality: str = "MR", positions: list[float] | None = None, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                 mask: bool = False) -> list[Path]:
    """One series of 20x20 random slices, 0.8 mm pixels, 2 mm apart along the slice normal (or at ``positions``)."""
    array = np.random.default_rng(len(description)).integers(0, 1000, size=(slices, 20, 20)).astype(np.int16)
    if mask:
        array = (array > 800).astype(np.int16)
    tags = {"0008|0060": modality, "0008|0008": image_type, "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.9.7", "0020|0052": "1.2.826.0.1.3680043.9.7.0", "0010|0020": "anon",
            "0008|0021": "20260101", "0008|0031": "120000"}
    return write_slices(folder, array, uid, positions if positions is not None else [2.0 * k for k in range(slices)],
                        pixel_spacing=(0.8, 0.8), tags=tags, direction=direction,
                        file_name=lambda k: f"{description.replace(' ', '_')}_{k:03d}.dcm")


def assert_refused(capfd, model, source: Path, tmp_path: Path, *words: str, named: Path | None = None) -> str:
    code, err, out_dir = run_segment_fd(capfd, model, source, tmp_path)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f": {named or source}: " in err, err
    assert all(word in err for word in words), err
    assert list(out_dir.iterdir()) == []
    return err


def sidecar_source(out_dir: Path) -> dict | None:
    return json.loads((out_dir / "seg.nii.gz.json").read_text())["source"]


# --- choosing the series ----------------------------------------------------------------------------------------


def test_tie_with_a_mask_series_is_refused_listing_the_candidates(tmp_path, capfd, tiny_model):
    study = tmp_path / "study"
    write_series(study, IMAGE_UID, "T1 post", image_type="ORIGINAL\\PRIMARY\\AXIAL")
    write_series(study, MASK_UID, "Mask Tumor", image_type="DERIVED\\SECONDARY", mask=True)
    assert_refused(capfd, tiny_model, study, tmp_path, IMAGE_UID, MASK_UID, '"T1 post"', '"Mask Tumor"',
                         "12 slices", "--series")


def test_series_option_chooses_even_a_mask_series_and_the_sidecar_records_it(tmp_path, capfd, tiny_model):
    study = tmp_path / "study"
    write_series(study, IMAGE_UID, "T1 post")
    write_series(study, MASK_UID, "Mask Tumor", image_type="DERIVED\\SECONDARY", mask=True)
    for uid, description in ((MASK_UID, "Mask Tumor"), (IMAGE_UID, "T1 post")):
        code, err, out_dir = run_segment_fd(capfd, tiny_model, study, tmp_path, "--series", uid, "--force")
        assert code == 0, err
        assert sidecar_source(out_dir) == {"dicom_series_uid": uid, "dicom_series_description": description}


def test_derived_series_with_most_slices_is_refused(tmp_path, capfd, tiny_model):
    study = tmp_path / "study"
    write_series(study, IMAGE_UID, "T1", slices=10)
    write_series(study, MASK_UID, "resampled", slices=14, image_type="DERIVED\\PRIMARY\\REFORMATTED")
    assert_refused(capfd, tiny_model, study, tmp_path, "looks like a mask or derived", "14 slices", "10 slices")


@pytest.mark.parametrize(("modality", "description"), [("SEG", "T1"), ("MR", "hippocampus labels"),
                                                       ("MR", "ROI"), ("RTSTRUCT", "T1")])
def test_mask_like_series_by_modality_or_description_is_refused(tmp_path, capfd, tiny_model, modality, description):
    study = tmp_path / "study"
    write_series(study, IMAGE_UID, "T2", slices=10)
    write_series(study, MASK_UID, description, slices=12, modality=modality)
    assert_refused(capfd, tiny_model, study, tmp_path, "looks like a mask", "--series")


def test_two_image_series_the_larger_is_chosen_and_the_other_by_option(tmp_path, capfd, tiny_model):
    study = tmp_path / "étude Ü 2"
    write_series(study / "a", IMAGE_UID, "T1 3D", slices=14)
    write_series(study / "b", OTHER_UID, "T2 axial", slices=10)
    code, err, out_dir = run_segment_fd(capfd, tiny_model, study, tmp_path)
    assert code == 0, err
    assert sidecar_source(out_dir)["dicom_series_description"] == "T1 3D"
    assert sitk.ReadImage(str(out_dir / "seg.nii.gz")).GetSize() == (20, 20, 14)
    code, err, out_dir = run_segment_fd(capfd, tiny_model, study, tmp_path, "--series", OTHER_UID, "--force")
    assert code == 0, err
    assert sidecar_source(out_dir) == {"dicom_series_uid": OTHER_UID, "dicom_series_description": "T2 axial"}
    assert sitk.ReadImage(str(out_dir / "seg.nii.gz")).GetSize() == (20, 20, 10)


def test_stray_files_beside_the_series_are_ignored(tmp_path, capfd, tiny_model):
    study = tmp_path / "with strays"
    write_series(study, IMAGE_UID, "T1")
    (study / "README.txt").write_text("exported by a PACS\n")
    (study / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (study / "DICOMDIR.bak").write_bytes(bytes(200))
    (study / "thumbs").mkdir()
    (study / "thumbs" / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    code, err, out_dir = run_segment_fd(capfd, tiny_model, study, tmp_path)
    assert code == 0, err
    assert sidecar_source(out_dir)["dicom_series_uid"] == IMAGE_UID


def test_oblique_series_reads_with_its_spacing_and_direction(tmp_path):
    direction = oblique_direction(25.0)
    if np.linalg.det(np.reshape(direction, (3, 3))) < 0:  # DICOM slices stack along row x column
        direction = tuple((np.reshape(direction, (3, 3)) @ np.diag([1.0, 1.0, -1.0])).ravel())
    write_series(tmp_path / "oblique", IMAGE_UID, "oblique", direction=direction)
    image = read_volume(tmp_path / "oblique")
    assert np.allclose(image.GetSpacing(), (0.8, 0.8, 2.0), atol=1e-3)
    assert np.allclose(image.GetDirection(), direction, atol=1e-4)
    assert image.GetMetaData(SERIES_UID_KEY) == IMAGE_UID and image.GetMetaData(SERIES_DESCRIPTION_KEY) == "oblique"


# --- slices that do not make one regular stack ----------------------------------------------------------------------


def test_missing_slice_is_refused_naming_its_position(tmp_path, capfd, tiny_model):
    files = write_series(tmp_path / "series", IMAGE_UID, "T1")
    files[5].unlink()  # the slice at 10 mm
    assert_refused(capfd, tiny_model, tmp_path / "series", tmp_path, "missing slice at 40.000 mm")  # 30 mm origin + 10


def test_two_missing_slices_are_both_named(tmp_path, capfd, tiny_model):
    files = write_series(tmp_path / "series", IMAGE_UID, "T1")
    files[5].unlink()
    files[6].unlink()
    assert_refused(capfd, tiny_model, tmp_path / "series", tmp_path, "40.000, 42.000 mm")


def test_uneven_spacing_is_refused(tmp_path, capfd, tiny_model):
    positions = [0, 2, 4, 6, 8, 10.5, 12.5, 14.5, 16.5, 18.5, 20.5, 22.5]
    write_series(tmp_path / "series", IMAGE_UID, "T1", positions=[float(p) for p in positions])
    assert_refused(capfd, tiny_model, tmp_path / "series", tmp_path, "unevenly spaced", "2.5 mm")


def test_duplicate_slice_position_is_refused(tmp_path, capfd, tiny_model):
    positions = [2.0 * k for k in range(11)] + [8.0]
    write_series(tmp_path / "series", IMAGE_UID, "T1", positions=positions)
    assert_refused(capfd, tiny_model, tmp_path / "series", tmp_path, "same position", "T1_004.dcm and T1_011.dcm")


def test_rounding_of_positions_within_one_percent_is_accepted(tmp_path):
    positions = [2.0 * k + (0.004 if k % 2 else -0.004) for k in range(12)]  # rounded positions
    write_series(tmp_path / "series", IMAGE_UID, "T1", positions=positions)
    assert read_volume(tmp_path / "series").GetSize() == (20, 20, 12)


def test_damaged_file_is_refused_in_one_line(tmp_path, capfd, tiny_model):
    files = write_series(tmp_path / "series", IMAGE_UID, "T1")
    files[4].write_bytes(files[4].read_bytes()[:-300])  # header intact, pixel data cut short
    assert_refused(capfd, tiny_model, tmp_path / "series", tmp_path, "damaged", named=files[4])


# --- the shared public series ---------------------------------------------------------------------------------------


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(require_shared(folder), target)
    return target


def test_ct_head_with_a_deleted_slice_is_refused(tmp_path, capfd, tiny_model):
    ct = copy_of(SHARED_DATA / "slicer_testing_ct_head_dicom", tmp_path)
    full = read_volume(ct)
    assert full.GetMetaData(SERIES_DESCRIPTION_KEY) == "None" and full.GetSize() == (64, 64, 93)
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(ct))
    Path(names[40]).unlink()
    assert_refused(capfd, tiny_model, ct, tmp_path, "missing slice at 60.000 mm")


def test_ct_head_with_a_damaged_file_is_refused(tmp_path, capfd, tiny_model):
    ct = copy_of(SHARED_DATA / "slicer_testing_ct_head_dicom", tmp_path)
    damaged = Path(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(ct))[20])
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size - 2000])
    assert_refused(capfd, tiny_model, ct, tmp_path, "damaged", named=damaged)


def test_real_study_whose_mask_series_ties_is_refused_then_read_with_series(tmp_path, capfd, tiny_model):
    study = require_shared(SHARED_DATA / "tcia_brain_tumor_progression_pgbm001")
    err = assert_refused(capfd, tiny_model, study, tmp_path, '"Mask_Tumor" 24 slices', '"T1post" 24 slices')
    t1post = "1.3.6.1.4.1.14519.5.2.1.4429.7055.197322826283777183783875680644"
    assert t1post in err
    image = read_volume(study, t1post)
    assert image.GetSize() == (260, 320, 24) and image.GetMetaData(SERIES_DESCRIPTION_KEY) == "T1post"


def test_series_too_large_for_the_limit_is_refused_before_reading(tmp_path, capfd, tiny_model, monkeypatch):
    write_series(tmp_path / "series", IMAGE_UID, "T1")
    monkeypatch.setenv("CAD_MAX_VOXELS", str(20 * 20 * 11))  # one slice short of the series
    assert_refused(capfd, tiny_model, tmp_path / "series", tmp_path, "too large", "20x20x12")


def test_unknown_series_uid_is_one_line(tmp_path):
    write_series(tmp_path / "series", IMAGE_UID, "T1")
    with pytest.raises(CadError, match="not found"):
        read_volume(tmp_path / "series", "9.9.9")
