"""Writing segmentation results: plain label images and 3D Slicer segmentation files (.seg.nrrd).

A result is a uint8 label image on the input's exact grid. ``.nii.gz``/``.nii``/``.nrrd``/``.mha`` carry only the
voxels; ``.seg.nrrd`` is the same 3D NRRD plus Slicer's ``SegmentN_*``/``Segmentation_*`` header fields, so Slicer opens
it as named, coloured segments with standard terminology instead of anonymous label values.

The fields follow what Slicer's own reader expects (``Libs/MRML/Core/vtkMRMLSegmentationStorageNode.cxx`` in
Slicer/Slicer, and ``slicerio/segmentation.py`` in lassoan/slicerio). Two details matter:

* Segments sharing a layer share one labelmap, and Slicer crops that labelmap to the ``Extent`` of the *first*
  segment of the layer. Per-label bounding boxes would therefore silently drop the other labels, so every segment
  gets the full image extent (Slicer and slicerio write the layer's extent too).
* The terminology goes in the ``TerminologyEntry`` tag of ``SegmentN_Tags``, the only place Slicer (old and new,
  5.x up to ``main``) reads it; there is no separate terminology header key.

Terminology, as written in a model card (every part except ``category`` and ``type`` is optional)::

    {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
     "type": {"scheme": "SCT", "code": "...", "meaning": "..."},
     "type_modifier": {...}, "region": {...}, "region_modifier": {...},
     "context": "Segmentation category and type - 3D Slicer General Anatomy list",   # default shown
     "region_context": "Anatomic codes - DICOM master list"}                       # default shown

Slicer before 5.8 looks the codes up in the named ``context`` and ignores an entry it cannot find there, so a card
whose codes come from another list should name that list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.io.images import LABELMAP_SUFFIXES, suffix_of
from cadcore.io.readback import check_image_file
from cadcore.io.writing import atomic_path, write_sitk

SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
EMPTY_TERMINOLOGY = "~^^~^^~^^~~^^~^^"  # Slicer reads an empty category as "no terminology"; we never invent codes
_CODE_PARTS = ("category", "type", "type_modifier", "region", "region_modifier")
_FORBIDDEN = ("~", "^", "|", "\n", "\r")  # separators of the entry string and of the Tags field, and NRRD line ends


def write_labelmap(image: sitk.Image, path: str | Path, labels: list[dict[str, Any]]) -> Path:
    """Write a label image atomically, in the format its suffix names, with ``image``'s exact geometry.

    ``labels`` is the model card's list (``value``, ``name``, ``color``, optional ``terminology``); only
    ``.seg.nrrd`` stores it. Nothing is left at ``path`` (nor beside it) when writing fails, and a write the
    library did not report as failed (a full disk) is caught by reading the file back.
    """
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in LABELMAP_SUFFIXES:
        raise CadError(f"unsupported labelmap format {suffix!r} (use one of {', '.join(LABELMAP_SUFFIXES)})", path)
    label_image = _as_uint8(image, path)
    if suffix == ".seg.nrrd":
        _add_segmentation_fields(label_image, labels, path)
    with atomic_path(path, check_image_file) as tmp:  # read back (size, header, every byte) before publishing
        write_sitk(label_image, tmp, path, True)  # compressed: gzip for NIfTI/NRRD, zlib for MetaImage
    return path


def terminology_entry(label: dict[str, Any]) -> str:
    """Slicer's ``TerminologyEntry`` string for a label: 7 parts joined by ``~``, each code as ``scheme^code^meaning``.

    The parts are: context, category, type, type modifier, region context, region, region modifier (the format of
    ``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``). Without a terminology every code stays empty
    (``^^``): a made-up "Anatomical Structure / <name>" code would look authoritative and be wrong.
    """
    terminology = label.get("terminology")
    if not terminology:
        return EMPTY_TERMINOLOGY
    name = label.get("name", label.get("value"))
    if not isinstance(terminology, dict) or not terminology.get("category") or not terminology.get("type"):
        raise CadError(f"label {name!r}: terminology needs at least 'category' and 'type' codes")
    codes = {part: _code(terminology.get(part), f"label {name!r} terminology {part}") for part in _CODE_PARTS}
    context = _clean(str(terminology.get("context", SLICER_CONTEXT)), f"label {name!r} terminology context")
    region_context = _clean(str(terminology.get("region_context", REGION_CONTEXT)), f"label {name!r} region context")
    return "~".join((context, codes["category"], codes["type"], codes["type_modifier"],
                     region_context, codes["region"], codes["region_modifier"]))


def label_volumes_ml(image: sitk.Image, labels: list[dict[str, Any]]) -> dict[int, float]:
    """Volume of each listed label in mL (voxel count × voxel volume in mm³ / 1000); 0.0 for an absent label.

    Counted slice by slice with ``bincount`` so a 512×512×600 CT result costs one pass and no full-size temporary.
    """
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.integer) or (array.size and array.min() < 0):
        raise CadError(f"expected a label image of non-negative integers, got {array.dtype}")
    values = [int(label["value"]) for label in labels]
    length = max([*values, int(array.max()) if array.size else 0]) + 1
    counts = np.zeros(length, dtype=np.int64)
    for plane in array.reshape(-1, *array.shape[-2:]) if array.ndim >= 2 else [array]:
        counts += np.bincount(plane.ravel(), minlength=length)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    return {value: float(counts[value]) * voxel_ml for value in values}


def _as_uint8(image: sitk.Image, path: Path) -> sitk.Image:
    """A fresh uint8 copy with the same grid and no inherited metadata (stale NIfTI/DICOM fields must not leak)."""
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise CadError(f"a labelmap must be a 3D scalar image, got {image.GetDimension()}D with "
                       f"{image.GetNumberOfComponentsPerPixel()} components", path)
    array = sitk.GetArrayViewFromImage(image)
    fractional = np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array))
    if array.size and (fractional or array.min() < 0 or array.max() > 255):
        raise CadError(f"label values must be integers in 0..255 (got {array.dtype} in "
                       f"[{array.min()}, {array.max()}])", path)
    out = sitk.GetImageFromArray(np.asarray(array, dtype=np.uint8))
    out.CopyInformation(image)
    return out


def _add_segmentation_fields(image: sitk.Image, labels: list[dict[str, Any]], path: Path) -> None:
    """Set Slicer's segmentation header fields on ``image`` (written as ``key:=value`` lines by the NRRD writer)."""
    segments = [label for label in labels if int(label["value"]) != 0]  # background is not a segment
    values = [int(label["value"]) for label in segments]
    if len(set(values)) != len(values) or not all(1 <= v <= 255 for v in values):
        raise CadError(f"label values must be distinct integers in 1..255, got {values}", path)
    present = set(np.unique(sitk.GetArrayViewFromImage(image)).tolist()) - {0}
    if present - set(values):  # Slicer would silently drop voxels whose value no segment claims
        raise CadError(f"label image has values {sorted(present - set(values))} that the label list does not name",
                       path)
    size = image.GetSize()
    full_extent = f"0 {size[0] - 1} 0 {size[1] - 1} 0 {size[2] - 1}"
    for index, label in enumerate(segments):
        name = _clean(str(label.get("name", "")), f"label {label['value']} name", allow=("~", "^", "|"))
        if not name:
            raise CadError(f"label {label['value']} has no name", path)
        color = label.get("color")
        fields = {
            "ID": f"Segment_{int(label['value'])}",
            "Name": name,
            "NameAutoGenerated": "0",
            "Color": " ".join(f"{float(c):.6g}" for c in _color(color, name, path)) if color else "0.5 0.5 0.5",
            "ColorAutoGenerated": "0" if color else "1",  # no colour given: let Slicer pick one
            "LabelValue": str(int(label["value"])),
            "Layer": "0",
            "Extent": full_extent,
            "Tags": f"TerminologyEntry:{terminology_entry(label)}|",  # trailing "|" is required by older Slicer
        }
        for key, value in fields.items():
            image.SetMetaData(f"Segment{index}_{key}", value)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    image.SetMetaData("Segmentation_ConversionParameters",
                      f"Reference image geometry|{reference_image_geometry(image)}|"
                      "Geometry of the image the segmentation was computed on&")


def reference_image_geometry(image: sitk.Image) -> str:
    """Slicer's serialized image geometry: IJK-to-RAS 4×4 row by row, then the extent, each followed by ``;``.

    Stored as the "Reference image geometry" conversion parameter so Slicer's Segment Editor (and DICOM SEG export)
    edits on the input's grid. RAS = diag(-1, -1, 1) × LPS, applied to both the direction and the origin.
    """
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    numbers = [repr(float(v) + 0.0) for v in ras.ravel()]  # + 0.0 turns -0.0 into 0.0, as Slicer writes it
    size = image.GetSize()
    extent = [0, size[0] - 1, 0, size[1] - 1, 0, size[2] - 1]
    return "".join(f"{item};" for item in [*numbers, *map(str, extent)])


def _code(code: Any, what: str) -> str:
    """``scheme^code^meaning`` from ``{"scheme", "code", "meaning"}``; ``^^`` for an absent optional code."""
    if not code:
        return "^^"
    if not isinstance(code, dict) or not all(isinstance(code.get(k), str) and code[k] for k in ("scheme", "code")):
        raise CadError(f"{what}: expected {{'scheme': ..., 'code': ..., 'meaning': ...}}, got {code!r}")
    return "^".join(_clean(str(code.get(k, "")), what) for k in ("scheme", "code", "meaning"))


def _clean(text: str, what: str, allow: tuple[str, ...] = ()) -> str:
    """Refuse characters that would split the entry, the Tags list or the NRRD header line."""
    bad = [c for c in _FORBIDDEN if c in text and c not in allow]
    if bad:
        raise CadError(f"{what} {text!r} contains {', '.join(map(repr, bad))}, which Slicer's format cannot hold")
    return text.strip()


def _color(color: Any, name: str, path: Path) -> list[float]:
    """Three floats in 0..1 (Slicer's segment colours are not 0..255)."""
    try:
        rgb = [float(c) for c in color]
    except (TypeError, ValueError):
        rgb = []
    if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
        raise CadError(f"label {name!r}: color must be three floats in 0..1, got {color!r}", path)
    return rgb
