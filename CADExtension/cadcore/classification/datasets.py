"""Classification datasets: MedMNIST-style ``.npz`` arrays or a CSV of (image, label[, mask, mask value]) rows.

Both become ``(N, 1, I, J, K)`` float32 network inputs plus integer labels, and, for the classical baseline, the
(image, mask, spacing) triples hand-crafted features need. CSV rows go through the same ROI extraction as
``cad classify`` so training and inference see identical inputs.
"""

from __future__ import annotations

import csv
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cadcore.errors import CadError

NPZ_SPLITS = ("train", "val", "test")


@dataclass
class ClassificationSet:
    inputs: np.ndarray  # (N, 1, I, J, K) float32, what the network sees
    labels: np.ndarray  # (N,) int64
    images: np.ndarray  # (N, I, J, K) float32 ROI intensities (features)
    masks: np.ndarray  # (N, I, J, K) bool lesion masks (features)
    spacing: tuple[float, float, float]
    ids: list[str]


def load_npz_split(path: Path, split: str) -> ClassificationSet:
    """One split of a MedMNIST .npz (``{split}_images`` uint8 (N, D, H, W), ``{split}_labels`` (N, 1))."""
    if split not in NPZ_SPLITS:
        raise CadError(f"unknown split {split!r} (use one of {', '.join(NPZ_SPLITS)})")
    keys = (f"{split}_images", f"{split}_labels")
    arrays = read_npz_arrays(Path(path), keys)
    images, labels = arrays[keys[0]], arrays[keys[1]]
    if images.ndim != 4 or images.shape[0] == 0 or min(images.shape[1:]) < 2:
        raise CadError(f"{keys[0]} must be (N, D, H, W) volumes with N >= 1, got shape {images.shape}", path)
    if images.dtype.kind not in "buif":
        raise CadError(f"{keys[0]} must hold numbers, got dtype {images.dtype}", path)
    if labels.ndim not in (1, 2) or (labels.ndim == 2 and labels.shape[1] != 1):
        raise CadError(f"{keys[1]} must be (N,) or (N, 1) class indices, got shape {labels.shape}", path)
    if len(labels) != len(images):
        raise CadError(f"{keys[1]} has {len(labels)} labels for {len(images)} images in {keys[0]}", path)
    labels = integer_labels(labels.reshape(-1), keys[1], path)
    images = images.astype(np.float32)
    if not np.isfinite(images).all():
        raise CadError(f"{keys[0]} contains NaN or infinite values", path)
    images /= max(1.0, float(images.max()))
    masks = images > 0.5
    return ClassificationSet(images[:, None], labels, images, masks, (1.0, 1.0, 1.0),
                             [f"{split}_{i}" for i in range(len(images))])


def integer_labels(values: np.ndarray, what: str, path: Path) -> np.ndarray:
    """Class indices 0, 1, ...: integer arrays, or floats that are whole numbers; anything else is refused."""
    if values.dtype.kind == "f" and np.isfinite(values).all() and (values == np.round(values)).all():
        values = values.astype(np.int64)
    if values.dtype.kind not in "ui":
        raise CadError(f"{what} must be integer class indices, got dtype {values.dtype}", path)
    if len(values) and values.min() < 0:
        raise CadError(f"{what} must be class indices >= 0, got {int(values.min())}", path)
    return values.astype(np.int64)


def read_npz_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named arrays of a .npz, each header checked before its data is read: object (pickled) arrays are never
    loaded, a member shorter than its header claims is refused before anything is allocated, and every zip or
    decompression failure becomes one line naming the file."""
    from numpy.lib import format as npy

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CadError(f"cannot read .npz (not a zip archive of arrays: {exc})", path) from exc
    with archive:
        members = {name[:-4]: name for name in archive.namelist() if name.endswith(".npy")}
        missing = [key for key in keys if key not in members]
        if missing:
            raise CadError(f"split {keys[0].split('_')[0]!r} is missing ({', '.join(missing)} not in "
                           f"{', '.join(sorted(members)) or 'the archive'})", path)
        arrays = {}
        for key in keys:
            info = archive.getinfo(members[key])
            try:
                with archive.open(info) as member:
                    version = npy.read_magic(member)
                    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                    shape, _, dtype = read_header(member)
                    if dtype.hasobject:
                        raise CadError(f"{key} is an object array (pickled Python objects are never loaded)", path)
                    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if info.file_size - member.tell() < needed:
                        raise CadError(f"{key} is truncated ({info.file_size - member.tell()} bytes, its header "
                                       f"{tuple(shape)} {dtype} needs {needed})", path)
                with archive.open(info) as member:
                    arrays[key] = npy.read_array(member, allow_pickle=False)
            except CadError:
                raise
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, SyntaxError) as exc:
                raise CadError(f"cannot read {key} from the .npz ({exc})", path) from exc
    return arrays


def through_roi(data: ClassificationSet, roi_spec: dict[str, Any]) -> ClassificationSet:
    """Re-cut array samples exactly as ``cad classify`` cuts a lesion (arrays read as I, J, K volumes at 1 mm).

    Training and evaluation then see what inference sees; features use :func:`.baseline.roi_feature_spacing`.
    """
    import SimpleITK as sitk

    from cadcore.classification.baseline import roi_feature_spacing
    from cadcore.classification.roi import extract_roi, network_input

    inputs, images, masks = [], [], []
    spacing = data.spacing
    for image_array, mask_array in zip(data.images, data.masks):
        image = sitk.GetImageFromArray(np.ascontiguousarray(image_array.transpose(2, 1, 0)))
        mask = sitk.GetImageFromArray(np.ascontiguousarray(mask_array.transpose(2, 1, 0)).astype(np.uint8))
        if not mask_array.any():
            mask = None
        roi = extract_roi(image, roi_spec, mask, 1 if mask is not None else None)
        inputs.append(network_input(roi, roi_spec, {"kind": "none"}) if mask is not None else image_array[None])
        images.append(roi.image)
        masks.append(roi.mask if roi.mask is not None else np.ones(roi.image.shape, dtype=bool))
        spacing = roi_feature_spacing(roi_spec, roi.grid.GetSpacing())
    return ClassificationSet(np.stack(inputs).astype(np.float32), data.labels, np.stack(images), np.stack(masks),
                             spacing, data.ids)


def extent_margin(masks: np.ndarray) -> float:
    """The margin that makes a mask's extent fill the block as in the training data (MedMNIST crops are loose)."""
    fractions = []
    for mask in masks:
        hits = np.argwhere(mask)
        if len(hits):
            fractions.append(float((hits.max(0) - hits.min(0) + 1).max()) / mask.shape[0])
    return round(float(1.0 / np.median(fractions) - 1.0), 3) if fractions else 0.1


@dataclass(frozen=True)
class CsvRow:
    line: int
    image: Path
    label: int
    mask: Path | None
    mask_value: int | None
    name: str


def _cell(row: dict[Any, Any], name: str) -> str:
    """A CSV cell, stripped; a short row's missing cells are empty."""
    value = row.get(name)
    return value.strip() if isinstance(value, str) else ""


def read_csv_rows(path: Path) -> list[CsvRow]:
    """Every row checked before any voxel is read: columns, integer labels and mask values, files that exist, and
    each mask's grid (from the headers) against its image's; a refusal names the CSV and the line."""
    from cadcore.io.datasets import grid_difference, read_grid

    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:  # a BOM (spreadsheet export) is not a column
            reader = csv.DictReader(stream)
            rows = list(reader)
            columns = set(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CadError(f"cannot read CSV ({exc})", path) from exc
    missing = [name for name in ("image", "label") if name not in columns]
    if missing:
        raise CadError(f"CSV needs a header with at least 'image' and 'label' columns (missing: "
                       f"{', '.join(missing)})", path)
    if not rows:
        raise CadError("CSV has a header but no rows", path)
    checked = []
    for number, row in enumerate(rows, start=2):
        def cell(name: str) -> str:
            return _cell(row, name)  # noqa: B023 (called only inside this iteration)

        if None in row:
            raise CadError(f"line {number}: more fields than the header has columns", path)
        if not cell("image"):
            raise CadError(f"line {number}: empty 'image'", path)
        try:
            label = int(cell("label"))
        except ValueError as exc:
            raise CadError(f"line {number}: label must be an integer class index, got {row['label']!r}", path) from exc
        if label < 0:
            raise CadError(f"line {number}: label must be a class index >= 0, got {label}", path)
        value = None
        if cell("mask_value"):
            try:
                value = int(cell("mask_value"))
            except ValueError as exc:
                raise CadError(f"line {number}: mask_value must be an integer label value, got "
                               f"{row['mask_value']!r}", path) from exc
        image = (path.parent / cell("image")).resolve()
        mask = (path.parent / cell("mask")).resolve() if cell("mask") else None
        for what, file in (("image", image), ("mask", mask)):
            if file is not None and not file.exists():
                raise CadError(f"line {number}: {what} file not found: {file}", path)
        if mask is not None and not image.is_dir():
            try:
                difference = grid_difference(read_grid(image), read_grid(mask))
            except CadError as exc:
                raise CadError(f"line {number}: {exc}", path) from exc
            if difference:
                raise CadError(f"line {number}: mask {mask.name} is not on the grid of {image.name} ({difference})",
                               path)
        checked.append(CsvRow(number, image, label, mask, value, Path(cell("image")).name))
    return checked


def load_csv(path: Path, roi_spec: dict[str, Any], normalization: dict[str, Any]) -> ClassificationSet:
    """Rows ``image,label[,mask,mask_value]`` (paths relative to the CSV); ROIs cut exactly as ``cad classify`` does."""
    from cadcore.classification.roi import extract_roi, network_input
    from cadcore.io.images import read_image, read_volume

    path = Path(path)
    rows = read_csv_rows(path)
    inputs, labels, images, masks, ids = [], [], [], [], []
    for row in rows:
        image = read_volume(row.image)
        mask = read_image(row.mask) if row.mask is not None else None
        roi = extract_roi(image, roi_spec, mask, row.mask_value, source=str(row.image))
        labels.append(row.label)
        inputs.append(network_input(roi, roi_spec, normalization))
        images.append(roi.image)
        masks.append(roi.mask if roi.mask is not None else np.ones(roi.image.shape, dtype=bool))
        ids.append(row.name)
    spacing = tuple(float(s) for s in roi.grid.GetSpacing())
    return ClassificationSet(np.stack(inputs), np.array(labels, dtype=np.int64), np.stack(images), np.stack(masks),
                             spacing, ids)  # type: ignore[arg-type]


def split_indices(n: int, seed: int, val_fraction: float, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified deterministic split for CSV data (npz data brings its own splits)."""
    rng = np.random.default_rng(seed)
    val = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        rng.shuffle(members)
        val.extend(members[: max(1, round(len(members) * val_fraction))].tolist())
    val_set = set(val)
    return np.array([i for i in range(n) if i not in val_set]), np.array(sorted(val_set))


def subset(data: ClassificationSet, index: np.ndarray) -> ClassificationSet:
    return ClassificationSet(data.inputs[index], data.labels[index], data.images[index], data.masks[index],
                             data.spacing, [data.ids[i] for i in index])
