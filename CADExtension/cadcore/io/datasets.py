"""Datasets for training and evaluation: an MSD-style ``dataset.json`` or a folder of image/label pairs.

Splits are deterministic from a seed, so ``cad evaluate --split val`` scores exactly the cases training held out
(the split is also written into the model card). A ``dataset.json`` may instead name its validation cases in a
``validation`` list (same entries as ``training``): that is how a split by patient is given, and how self-training
keeps pseudo-labelled volumes out of validation. A ``training`` entry with ``"pseudo": true`` is pseudo-labelled:
its label may mark voxels with 255 (:data:`cadcore.training.losses.IGNORE_LABEL`), which the loss skips; in any
other label 255 is refused like every value outside the label set.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cadcore.errors import CadError
from cadcore.io.images import VOLUME_SUFFIXES, suffix_of


@dataclass(frozen=True)
class Case:
    id: str
    image: Path
    label: Path | None
    pseudo: bool = False  # a pseudo-label (self-training): may contain the ignore value 255


@dataclass
class Dataset:
    root: Path
    cases: list[Case]
    label_names: dict[int, str]
    modality: str | None = None
    licence: str | None = None
    name: str | None = None
    validation: list[Case] | None = None  # an explicit validation split (dataset.json ``validation``)


def case_id(path: Path) -> str:
    name = path.name[: -len(suffix_of(path))]
    return name[:-5] if name.endswith("_0000") else name  # nnU-Net channel suffix


def load_dataset(source: str | Path) -> Dataset:
    """Read ``dataset.json`` (a file, or inside a folder) or pair ``images*/``+``labels*/`` folders by name."""
    source = Path(source)
    if not source.exists():
        raise CadError("dataset not found", source)
    if source.is_dir() and (source / "dataset.json").is_file():
        source = source / "dataset.json"
    if source.is_file():
        return _from_json(source)
    return _from_folders(source)


def _from_json(path: Path) -> Dataset:
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CadError(f"cannot parse dataset description ({exc})", path) from exc
    entries = spec.get("training")
    if not isinstance(entries, list) or not entries:
        raise CadError("dataset.json has no 'training' list of image/label pairs", path)
    validation = spec.get("validation")
    if validation is not None and (not isinstance(validation, list) or not validation):
        raise CadError("dataset.json 'validation' must be a non-empty list of image/label pairs", path)
    cases = _cases(entries, path)
    held_out = _cases(validation, path) if validation else None
    if held_out and {c.id for c in held_out} & {c.id for c in cases}:
        raise CadError("dataset.json lists a case in both 'training' and 'validation'", path)
    if held_out and any(c.pseudo for c in held_out):  # validation scores against pseudo-labels would mean nothing
        raise CadError("dataset.json 'validation' lists a pseudo-labelled case", path)
    labels = {int(k): str(v) for k, v in spec.get("labels", {}).items() if int(k) != 0}
    modality = next(iter(spec.get("modality", {}).values()), None)
    return Dataset(path.parent, cases, labels, modality, spec.get("licence") or spec.get("license"), spec.get("name"),
                   held_out)


def _cases(entries: list, path: Path) -> list[Case]:
    cases = []
    for entry in entries:
        if not isinstance(entry, dict) or "image" not in entry:
            raise CadError(f"dataset.json entry without an 'image': {entry!r}", path)
        image = (path.parent / entry["image"]).resolve()
        label = (path.parent / entry["label"]).resolve() if entry.get("label") else None
        for file in (image, label):
            if file is not None and not file.exists():
                raise CadError(f"dataset.json refers to a missing file: {file}", path)
        cases.append(Case(case_id(image), image, label, entry.get("pseudo") is True))
    return cases


def _from_folders(folder: Path) -> Dataset:
    images_dir = next((folder / n for n in ("imagesTr", "images") if (folder / n).is_dir()), None)
    labels_dir = next((folder / n for n in ("labelsTr", "labels") if (folder / n).is_dir()), None)
    if images_dir is None or labels_dir is None:
        raise CadError("expected dataset.json or images/ and labels/ (or imagesTr/ and labelsTr/) folders", folder)
    labels = {case_id(p): p for p in labels_dir.iterdir() if suffix_of(p) in VOLUME_SUFFIXES}
    cases = []
    for image in sorted(p for p in images_dir.iterdir() if suffix_of(p) in VOLUME_SUFFIXES):
        cid = case_id(image)
        if cid not in labels:
            raise CadError(f"image {image.name} has no label with the same name", labels_dir)
        cases.append(Case(cid, image, labels[cid]))
    if not cases:
        raise CadError("no images found", images_dir)
    return Dataset(folder, cases, {})


def split_cases(cases: list[Case], seed: int, val_fraction: float) -> tuple[list[Case], list[Case]]:
    """Deterministic shuffle by seed; the last ``val_fraction`` are validation (at least one case each side)."""
    ordered = sorted(cases, key=lambda c: c.id)
    random.Random(seed).shuffle(ordered)
    n_val = min(len(ordered) - 1, max(1, round(len(ordered) * val_fraction))) if len(ordered) > 1 else 0
    return ordered[n_val:], ordered[:n_val]


def select_split(dataset: Dataset, split: str, val_ids: list[str] | None) -> list[Case]:
    """Cases for ``cad evaluate``: ``all``, or ``val`` = the ids the model card lists as held out."""
    everything = dataset.cases + (dataset.validation or [])
    if split == "all":
        return everything
    if split == "val":
        if not val_ids:
            raise CadError("model card lists no validation cases; use --split all", dataset.root)
        wanted = set(val_ids)
        chosen = [case for case in everything if case.id in wanted]
        if not chosen:
            raise CadError("none of the model's validation cases are in this dataset; use --split all", dataset.root)
        return chosen
    raise CadError(f"unknown split {split!r} (use val or all)")


def dataset_description(dataset: Dataset, training: list[dict[str, Any]], validation: list[dict[str, Any]],
                        name: str | None = None, **extra: Any) -> dict[str, Any]:
    """A ``dataset.json`` derived from ``dataset`` (its labels, licence and modality) with other cases: the one writer
    of the format :func:`load_dataset` reads (cascade crops, self-training's pseudo-labelled set)."""
    labels = {"0": "background", **{str(k): v for k, v in sorted(dataset.label_names.items())}}
    spec: dict[str, Any] = {"name": name or dataset.name or dataset.root.name, "labels": labels,
                            "training": training, "validation": validation, **extra}
    if dataset.licence:
        spec["licence"] = dataset.licence
    if dataset.modality:
        spec["modality"] = {"0": dataset.modality}
    return spec


def dataset_entry(image: str | Path, label: str | Path, pseudo: bool = False) -> dict[str, Any]:
    """A dataset.json entry; a pseudo-labelled case (self-training) stays marked as one."""
    return {"image": str(image), "label": str(label), **({"pseudo": True} if pseudo else {})}
