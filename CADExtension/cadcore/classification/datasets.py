"""Classification datasets: MedMNIST-style ``.npz`` arrays or a CSV of (image, label[, mask, mask value]) rows.

Both become ``(N, 1, I, J, K)`` float32 network inputs plus integer labels, and, for the classical baseline, the
(image, mask, spacing) triples hand-crafted features need. CSV rows go through the same ROI extraction as
``cad classify`` so training and inference see identical inputs.
"""

from __future__ import annotations

import csv
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
    try:
        archive = np.load(path)
    except (OSError, ValueError) as exc:
        raise CadError(f"cannot read .npz ({exc})", path) from exc
    keys = (f"{split}_images", f"{split}_labels")
    missing = [key for key in keys if key not in archive.files]
    if missing:
        raise CadError(f"split {split!r} is missing ({', '.join(missing)} not in {', '.join(archive.files)})", path)
    images = archive[keys[0]].astype(np.float32)
    if images.ndim != 4:
        raise CadError(f"{keys[0]} must be (N, D, H, W) volumes, got shape {images.shape}", path)
    images /= max(1.0, float(images.max()))
    labels = archive[keys[1]].reshape(len(images), -1)[:, 0].astype(np.int64)
    masks = images > 0.5
    return ClassificationSet(images[:, None], labels, images, masks, (1.0, 1.0, 1.0),
                             [f"{split}_{i}" for i in range(len(images))])


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


def load_csv(path: Path, roi_spec: dict[str, Any], normalization: dict[str, Any]) -> ClassificationSet:
    """Rows ``image,label[,mask,mask_value]`` (paths relative to the CSV); ROIs cut exactly as ``cad classify`` does."""
    from cadcore.classification.roi import extract_roi, network_input
    from cadcore.io.images import read_image, read_volume

    try:
        rows = list(csv.DictReader(open(path, newline="")))
    except OSError as exc:
        raise CadError(f"cannot read CSV ({exc})", path) from exc
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise CadError("CSV needs a header with at least 'image' and 'label' columns", path)
    inputs, labels, images, masks, ids = [], [], [], [], []
    for number, row in enumerate(rows, start=2):
        image_path = (path.parent / row["image"]).resolve()
        image = read_volume(image_path)
        mask = read_image((path.parent / row["mask"]).resolve()) if row.get("mask") else None
        value = int(row["mask_value"]) if row.get("mask_value") else None
        roi = extract_roi(image, roi_spec, mask, value, source=str(image_path))
        try:
            labels.append(int(row["label"]))
        except ValueError as exc:
            raise CadError(f"line {number}: label must be an integer class index, got {row['label']!r}", path) from exc
        inputs.append(network_input(roi, roi_spec, normalization))
        images.append(roi.image)
        masks.append(roi.mask if roi.mask is not None else np.ones(roi.image.shape, dtype=bool))
        ids.append(Path(row["image"]).name)
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
