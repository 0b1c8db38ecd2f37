"""DICOM SEG output (issue 20): ``cad segment SERIES -o OUT.dcm`` and ``cad batch --format dcm``.

Each SEG is read back with highdicom, frame by frame against the source series' SOP instances (in the order the
engine read the slices), and must give exactly the labels of the NIfTI written for the same input. The series are a
synthetic oblique one whose slice positions decrease along the normal, the shared Udacity hippocampus crop (MR,
axial) and the shared TCIA glioblastoma T1 (a real oblique acquisition); Slicer's CT head series, which has no frame
of reference, must be refused before anything is read. The "dciodvfy-style" checks are those pydicom and highdicom
can make: the IOD's key attributes, every reference resolving to the source series, strict VR parsing.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from dicom_writer import FRAME_UID, STUDY_UID, blob_volume, write_series

from cadcore.io.dicom import select_series
from cadcore.io.dicom_seg import source_files, write_dicom_seg
from cadcore.io.images import read_volume
from conftest import SHARED_DATA, oblique_direction, require_shared, run_cad

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def seg_labels_on_source_grid(path: Path, series_dir: Path) -> np.ndarray:
    """The SEG's labels as a (slices, rows, columns) label-value array on the source series' slices."""
    seg = hd.seg.segread(path)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in select_series(series_dir)[0].files]
    numbers = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    values = np.zeros(len(seg.SegmentSequence) + 1, np.uint8)
    for item in seg.SegmentSequence:
        values[int(item.SegmentNumber)] = int(item.TrackingID.split()[-1])  # "label <value>"
    return values[numbers]


def oblique_decreasing_series(tmp_path: Path) -> Path:
    """Oblique, with the slices stacked against row x column: positions decrease along the normal."""
    direction = np.reshape(oblique_direction(25.0), (3, 3))
    if np.linalg.det(direction) > 0:
        direction = direction @ np.diag([1.0, 1.0, -1.0])
    folder = tmp_path / "oblique_series"
    write_series(folder, blob_volume((14, 26, 22)), direction=tuple(direction.ravel()))
    return folder


def segment_both(tmp_path: Path, tiny_model, series: Path, capsys) -> tuple[np.ndarray, Path]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    for name in ("seg.nii.gz", "seg.dcm"):
        code, _, err = run_cad(capsys, "segment", str(series), "-m", str(tiny_model.folder), "-o", str(out / name))
        assert code == 0, err
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "seg.nii.gz")))
    return nifti, out / "seg.dcm"


def check_references(path: Path, series_dir: Path, labels: np.ndarray) -> pydicom.Dataset:
    """The IOD's key attributes, and every reference resolving into the source series."""
    with pydicom.config.strict_reading():
        seg = pydicom.dcmread(path)
        for _element in seg.iterall():  # every value parsed with strict VR validation
            pass
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(f, stop_before_pixels=True)
                                                 for f in select_series(series_dir)[0].files)}
    first = next(iter(sources.values()))
    assert seg.SOPClassUID == SEG_STORAGE and seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.PatientID == first.PatientID and seg.SeriesInstanceUID != first.SeriesInstanceUID
    for keyword in ("SOPInstanceUID", "SeriesNumber", "InstanceNumber", "ContentLabel", "Manufacturer",
                    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "DimensionIndexSequence",
                    "ReferencedSeriesSequence", "SegmentSequence", "Rows", "Columns", "NumberOfFrames"):
        assert keyword in seg, keyword
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == set(sources)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert source_uid in sources
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose(position, sources[source_uid].ImagePositionPatient, atol=1e-3)
    frames_with_content = sum(int((labels[k] == value).any()) for k in range(labels.shape[0])
                              for value in np.unique(labels) if value)
    if frames_with_content:  # only frames with content (an empty result keeps every frame: none is not allowed)
        assert seg.NumberOfFrames == frames_with_content
    return seg


def test_oblique_decreasing_series_round_trips_exactly(tmp_path, tiny_model, capsys):
    series = oblique_decreasing_series(tmp_path)
    files = select_series(series)[0].files
    normal = np.cross(*np.reshape(pydicom.dcmread(files[0]).ImageOrientationPatient, (2, 3)))
    by_instance = sorted(files, key=lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))
    along = [float(np.dot(pydicom.dcmread(f).ImagePositionPatient, normal)) for f in by_instance]
    assert along == sorted(along, reverse=True)  # the premise: positions decrease with the instance number
    nifti, dcm = segment_both(tmp_path, tiny_model, series, capsys)
    assert nifti.any(), "the tiny model should label something on the blob"
    back = seg_labels_on_source_grid(dcm, series)
    assert back.dtype == nifti.dtype and np.array_equal(back, nifti)
    seg = check_references(dcm, series, nifti)
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["anterior", "posterior"]
    sidecar = json.loads(Path(f"{dcm}.json").read_text())
    assert sidecar["output"] == str(dcm) and sidecar["source"]["dicom_series_uid"] == seg.ReferencedSeriesSequence[
        0].SeriesInstanceUID


def test_highdicom_volume_has_the_series_geometry(tmp_path, tiny_model, capsys):
    """The SEG's own geometry (what a viewer places it by): every labelled voxel of highdicom's volume, taken to
    patient coordinates by its affine, lands on a voxel of the NIfTI result with the same label."""
    series = oblique_decreasing_series(tmp_path)
    nifti, dcm = segment_both(tmp_path, tiny_model, series, capsys)
    image = read_volume(series)
    seg = hd.seg.segread(dcm)
    volume = seg.get_volume(combine_segments=True, atol=1e-3)  # positions are written to 4 decimals
    values = {int(item.SegmentNumber): int(item.TrackingID.split()[-1]) for item in seg.SegmentSequence}
    indices = np.argwhere(volume.array > 0)
    assert len(indices) == int((nifti > 0).sum())
    points = (volume.affine @ np.c_[indices, np.ones(len(indices))].T).T[:, :3]  # LPS mm, like ITK's
    for index, point in zip(indices, points):
        x, y, z = (int(round(c)) for c in image.TransformPhysicalPointToContinuousIndex(point.tolist()))
        assert nifti[z, y, x] == values[int(volume.array[tuple(index)])]


def test_shared_hippocampus_crop_round_trips_exactly(tmp_path, tiny_model, capsys):
    series = require_shared(SHARED_DATA / "udacity_hippocrop_dicom/Study1/13_HCropVolume")
    nifti, dcm = segment_both(tmp_path, tiny_model, series, capsys)
    assert np.array_equal(seg_labels_on_source_grid(dcm, series), nifti)
    check_references(dcm, series, nifti)


def test_shared_oblique_glioblastoma_series_round_trips_exactly(tmp_path):
    """A real oblique acquisition (TCIA PGBM-001 T1 post-contrast, tilted about 9 degrees): labels drawn on the
    image as read go through the writer and come back on the same voxels (no network: at its 5 mm slices and 320
    columns the tiny model would take minutes on a 2-core machine)."""
    series = require_shared(SHARED_DATA / "tcia_brain_tumor_progression_pgbm001/11-T1post-80644")
    image = read_volume(series)
    array = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    array[5:12, 100:180, 60:150] = 1
    array[14:16, 40:60, 200:230] = 2
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    out = tmp_path / "seg.dcm"
    write_dicom_seg(labels, source_files(image, series), [{"value": 1, "name": "a", "color": [1, 0, 0]},
                                                          {"value": 2, "name": "b", "color": [0, 0, 1]}], "m", "1", out)
    assert np.array_equal(seg_labels_on_source_grid(out, series), array)
    check_references(out, series, array)


def test_ct_head_without_frame_of_reference_is_refused_before_reading(tmp_path, tiny_model, capfd):
    series = require_shared(SHARED_DATA / "slicer_testing_ct_head_dicom")
    from cadcore.cli import main

    code = main(["segment", str(series), "-m", str(tiny_model.folder), "-o", str(tmp_path / "seg.dcm")])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "FrameOfReferenceUID" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [tiny_model.folder]


def test_dcm_output_from_a_file_is_refused_in_one_line(tmp_path, tiny_model, capfd, oblique_image):
    source = tmp_path / "volume.nii.gz"
    sitk.WriteImage(oblique_image, str(source))
    from cadcore.cli import main

    capfd.readouterr()
    code = main(["segment", str(source), "-m", str(tiny_model.folder), "-o", str(tmp_path / "seg.dcm")])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "DICOM series folder" in err and str(source) in err
    assert not (tmp_path / "seg.dcm").exists() and not (tmp_path / "seg.dcm.json").exists()


def test_terminology_colours_algorithm_and_non_consecutive_values(tmp_path):
    """Card codes go into the segment; a label without codes gets SCT Tissue; values 1 and 5 map to segments 1, 2
    and back; a segment with no voxel has no frame; the file is published whole (no temporary left)."""
    series = tmp_path / "series"
    write_series(series, blob_volume((6, 12, 10)))
    image = read_volume(series)
    array = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)
    array[1:3, 2:6, 3:7] = 5
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    liver = {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
             "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"}}
    infos = [{"value": 1, "name": "liver", "color": [0.86, 0.2, 0.2], "terminology": liver},
             {"value": 5, "name": "lesion", "color": [0.1, 0.8, 0.1]}]
    out = tmp_path / "seg.dcm"
    write_dicom_seg(labels, source_files(image, series), infos, "test-model", "1.2.3", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm", "series"]
    seg = pydicom.dcmread(out)
    first, second = seg.SegmentSequence
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
    assert second.SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # generic Tissue
    assert second.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"
    red = hd.color.CIELabColor.from_dicom_value(first.RecommendedDisplayCIELabValue).to_rgb()
    assert np.allclose(red, (219, 51, 51), atol=2)
    algorithm = first.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("test-model", "1.2.3")
    assert first.SegmentAlgorithmType == "AUTOMATIC" and first.TrackingID == "label 1"
    assert seg.NumberOfFrames == 2  # two slices hold label 5, none holds label 1
    assert np.array_equal(seg_labels_on_source_grid(out, series), array)
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == FRAME_UID


def test_batch_format_dcm_writes_one_seg_per_series_and_refuses_files(tmp_path, tiny_model, capsys):
    inputs = tmp_path / "inputs"
    write_series(inputs / "patient_a", blob_volume((8, 18, 16), seed=1), uid="1.2.826.0.1.3680043.9.7.20.2")
    write_series(inputs / "patient_b", blob_volume((9, 16, 18), seed=2), uid="1.2.826.0.1.3680043.9.7.20.3")
    code, out, err = run_cad(capsys, "batch", str(inputs), "-m", str(tiny_model.folder), "-o", str(tmp_path / "o"),
                             "--format", "dcm")
    assert code == 0, err
    for case in ("patient_a", "patient_b"):
        reference = tmp_path / f"{case}.nii.gz"
        assert run_cad(capsys, "segment", str(inputs / case), "-m", str(tiny_model.folder), "-o",
                       str(reference))[0] == 0
        expected = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
        assert np.array_equal(seg_labels_on_source_grid(tmp_path / "o" / f"{case}.dcm", inputs / case), expected)
    sitk.WriteImage(sitk.GetImageFromArray(blob_volume((8, 8, 8)).astype(np.float32)), str(inputs / "file.nii.gz"))
    code, out, err = run_cad(capsys, "batch", str(inputs), "-m", str(tiny_model.folder), "-o", str(tmp_path / "o2"),
                             "--format", "dcm")
    assert code == 2 and err.count("\n") == 1 and "file.nii.gz" in err and not (tmp_path / "o2").exists()
