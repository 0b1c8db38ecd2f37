"""DICOM SEG output: a segmentation that PACS, XNAT, OHIF and Slicer's QuantitativeReporting read back in place.

Written with highdicom (``highdicom.seg.Segmentation``) from the source series' own files, so the object references
the study, the series, every SOP instance it was derived from and the frame of reference, and each frame carries
the plane position of its source slice. The mapping from label slices to source files does not depend on the
order of the files on disk or on the slice positions' direction: slice ``k`` of an image read by
:func:`cadcore.io.dicom.read_dicom_series` is file ``k`` of the list GDCM sorted for it, and that same list is given
to highdicom as the source images, frame for frame (decreasing positions and oblique stacks included).

One segment per card label (segment numbers 1..n in the card's order; the label value is kept in the segment's
tracking id ``label <value>``), with the label's name, its colour as CIELab, the card's SNOMED category/type codes
(a label without codes gets the generic SCT "Tissue" category and type: PS3.3 requires both), and the algorithm
identification (model id, version, family "Artificial Intelligence"). BINARY segmentation type; frames with no
voxel of a segment are omitted (highdicom's ``omit_empty_frames``). Written under a temporary name, read back with
pydicom, then published (:func:`cadcore.io.writing.atomic_path`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.io.dicom import select_series, series_files_of
from cadcore.io.writing import atomic_path

SEG_SERIES_NUMBER = 900  # a fixed, recognisable series number for derived segmentations
TISSUE = ("85756007", "SCT", "Tissue")  # the generic code PS3.3 allows when nothing more precise is known


def check_series_input(path: str | Path, series_uid: str | None = None) -> Path:
    """A DICOM SEG output needs a DICOM series as input (``cad segment``'s check before any voxel is read)."""
    path = Path(path)
    if not path.is_dir():
        raise CadError("a DICOM SEG output (.dcm) needs a DICOM series folder as input, not a file", path)
    check_seg_source(select_series(path, series_uid)[0].files[0])
    return path


def check_seg_source(first_file: str | Path) -> None:
    """The series' first header must name its study, series and frame of reference (the SEG IOD requires them;
    Slicer's CTHeadAxialDicom test series, for one, has no frame of reference)."""
    import pydicom

    try:
        header = pydicom.dcmread(first_file, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged header
        raise CadError(f"cannot read the DICOM header ({exc})", first_file) from exc
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not str(header.get(keyword, "")).strip():
            raise CadError(f"the source series has no {keyword}, which a DICOM SEG must reference", first_file)


def source_files(image: sitk.Image, where: str | Path) -> list[str]:
    """The files of the series ``image`` was read from (slice k = file k), as :func:`read_dicom_series` recorded."""
    files = series_files_of(image)
    if not files:
        raise CadError("a DICOM SEG output (.dcm) needs an image read from a DICOM series", where)
    return files


def write_dicom_seg(labels: sitk.Image, files: list[str], label_infos: list[dict[str, Any]], model_id: str,
                    model_version: str, path: Path) -> None:
    """Write ``labels`` (uint8 on the series' exact grid) as a DICOM SEG referencing the series whose ``files``
    (slice k = file k: :func:`source_files` of the image read) it was computed on.

    ``label_infos`` is the card's label list (value, name, color, terminology)."""
    import highdicom as hd
    import pydicom

    from cadcore import __version__

    path = Path(path)
    series_dir = Path(files[0]).parent
    sources = [_with_type2(pydicom.dcmread(file, stop_before_pixels=True), labels.GetSpacing()[2])
               for file in files]
    array = sitk.GetArrayFromImage(labels)  # (slice, row, column): slice k is files[k]
    if array.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise CadError(f"labels of shape {array.shape} do not lie on the series' grid ({len(sources)} slices of "
                       f"{sources[0].Rows}x{sources[0].Columns})", series_dir)
    numbers = np.zeros(max([int(info["value"]) for info in label_infos] + [int(array.max()), 0]) + 1, np.uint8)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(name=model_id, version=model_version or "unknown",
                                                   family=hd.sr.CodedConcept("123110", "DCM",
                                                                             "Artificial Intelligence"))
    for number, info in enumerate(label_infos, start=1):
        numbers[int(info["value"])] = number
        category, kind = _codes(info)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=str(info["name"])[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id=f"label {int(info['value'])}",
            display_color=_cielab(info.get("color"))))
    segment_map = numbers[array]  # label values -> segment numbers 1..n (0 stays background)
    logger = logging.getLogger("highdicom")  # its notes (an empty result keeps all frames) are not the user's
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # nor are its remarks on the source's own attributes (person name style)
            warnings.simplefilter("ignore", UserWarning)
            seg = hd.seg.Segmentation(
                source_images=sources, pixel_array=segment_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="CADExtension",
                manufacturer_model_name=model_id[:64], software_versions=f"cadcore {__version__}",
                device_serial_number="0", content_label="CADSEG",
                content_description=f"{model_id} {model_version}"[:64],
                series_description=f"{model_id} segmentation"[:64], omit_empty_frames=True)
    finally:
        logger.setLevel(level)
    with atomic_path(path, check_dicom_file) as tmp:
        seg.save_as(tmp)


TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2(dataset: Any, slice_spacing: float) -> Any:
    """The patient and study attributes the SEG copies are Type 2 (present, possibly empty); anonymised or cropped
    series often lack some (the Udacity hippocampus crops have no PatientBirthDate), and highdicom then refuses.
    They are added, empty, to the in-memory copy only: the source files are never changed. A source without
    SliceThickness (Type 2 too, but the SEG's pixel measures need a number) is given the slice spacing, and a
    SpacingBetweenSlices that disagrees with the slice positions (SimpleITK's writer puts 1 in every slice it writes)
    is replaced by their spacing, which highdicom copies and viewers stack the frames by."""
    for keyword in TYPE2_COPIED:
        if keyword not in dataset:
            setattr(dataset, keyword, "")
    if not str(dataset.get("SliceThickness", "") or "").strip():
        dataset.SliceThickness = f"{slice_spacing:.6g}"
    declared = dataset.get("SpacingBetweenSlices")
    if declared is not None and abs(float(declared or 0) - slice_spacing) > 0.01 * slice_spacing:
        dataset.SpacingBetweenSlices = f"{slice_spacing:.6g}"  # the positions' spacing, which the image was read on
    return dataset


def _codes(info: dict[str, Any]) -> tuple[Any, Any]:
    """The label's SNOMED category and type from the card, or the generic "Tissue" pair."""
    import highdicom as hd

    terminology = info.get("terminology") or {}
    parts = []
    for part in ("category", "type"):
        code = terminology.get(part) if isinstance(terminology, dict) else None
        if not code:
            return hd.sr.CodedConcept(*TISSUE), hd.sr.CodedConcept(*TISSUE)
        parts.append(hd.sr.CodedConcept(str(code["code"]), str(code["scheme"]), str(code["meaning"])))
    return parts[0], parts[1]


def _cielab(color: Any) -> Any:
    """The card's RGB colour (0–1 floats) as DICOM's CIELab display colour; None without a colour."""
    import highdicom as hd

    if not color:
        return None
    red, green, blue = (min(255.0, max(0.0, float(c) * 255.0)) for c in list(color)[:3])
    return hd.color.CIELabColor.from_rgb(red, green, blue)


def check_dicom_file(tmp: Path, final: Path) -> None:
    """Read a written SEG back (header and pixel data present): before it is published, and by ``cad batch
    --resume`` deciding whether a case is complete."""
    import pydicom

    try:
        dataset = pydicom.dcmread(tmp)
        if "PixelData" not in dataset:
            raise ValueError("no pixel data")
    except Exception as exc:  # noqa: BLE001 - any failure to read back means the file must not be published
        raise CadError(f"could not be written: the DICOM SEG does not read back ({exc})", final) from exc
