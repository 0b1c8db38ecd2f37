"""Datasets for training and evaluation: an MSD-style ``dataset.json`` or a folder of image/label pairs.

Splits are deterministic from a seed, so ``cad evaluate --split val`` scores exactly the cases training held out
(the split is also written into the model card). A ``dataset.json`` may instead name its validation cases in a
``validation`` list (same entries as ``training``): that is how a split by patient is given, and how self-training
keeps pseudo-labelled volumes out of validation. A ``training`` entry with ``"pseudo": true`` is pseudo-labelled:
its label may mark voxels with 255 (:data:`cadcore.training.losses.IGNORE_LABEL`), which the loss skips; in any
other label 255 is refused like every value outside the label set. A ``training`` entry may carry a sampling
``weight`` (a finite number >= 0, default 1): the training loader draws cases in proportion to it
(:func:`cadcore.training.patches.case_sampler`), so a data set assembled from sources of very different sizes (260
hippocampus crops beside 3 TotalSegmentator scans) gives each source the share it chose, and model-made labels less.
A ``training`` or ``validation`` entry may list ``labels_present`` (label values, e.g. ``[1, 3, 5]``): the labels that
were contoured in that case (partly labelled data, such as OpenKBP's organs at risk). A label not listed is unknown
there, not background: training masks it out of the loss (:class:`cadcore.training.losses.MaskedDiceCELoss`) and
``cad evaluate`` scores it only over the cases that list it. Without the field every label is present.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from cadcore.errors import CadError, native_message
from cadcore.io.images import VOLUME_SUFFIXES, suffix_of
from cadcore.io.native import itk_warnings_off


@dataclass(frozen=True)
class Case:
    id: str
    image: Path
    label: Path | None
    pseudo: bool = False  # a pseudo-label (self-training): may contain the ignore value 255
    weight: float = 1.0  # relative chance of being drawn for a training patch (dataset.json ``weight``)
    labels_present: tuple[int, ...] | None = None  # partly labelled: the labels contoured here (None: all of them)

    def has_label(self, value: int) -> bool:
        """Whether label ``value`` was contoured in this case (so its absence means background, and it is scored)."""
        return self.labels_present is None or value in self.labels_present


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
    """Read ``dataset.json`` (a file, or inside a folder) or pair ``images*/``+``labels*/`` folders by name.

    Everything that can be checked without reading voxels is checked here, before the first case is preprocessed:
    the description's types, that every file exists, unique case ids, and that every label's header describes its
    image's grid (a mismatch found at case 40 would otherwise cost the 39 cases before it)."""
    source = Path(source)
    if not source.exists():
        raise CadError("dataset not found", source)
    if source.is_dir() and (source / "dataset.json").is_file():
        source = source / "dataset.json"
    dataset = _from_json(source) if source.is_file() else _from_folders(source)
    for case in dataset.cases + (dataset.validation or []):
        if case.label is not None:
            check_pair_grid(case.image, case.label)
    return dataset


GRID_TOLERANCE = 1e-3  # mm (and direction cosines): what check_same_grid accepts when the voxels are read


def read_grid(path: Path) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(size, spacing, origin, direction) from the header alone (``ReadImageInformation``: no voxels read), with
    ITK's warnings kept off stderr so a refusal stays one line."""
    if path.is_dir():
        raise CadError("is a folder, expected a volume file", path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with itk_warnings_off():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise CadError(f"cannot read image header ({native_message(exc)})", path) from exc
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def grid_difference(a: tuple, b: tuple, tolerance: float = GRID_TOLERANCE) -> str | None:
    """Which of size/spacing/origin/direction differ between two :func:`read_grid` results (``None``: same grid)."""
    if a[0] != b[0]:
        return f"size {list(b[0])} vs {list(a[0])}"
    for name, first, second in zip(("spacing", "origin", "direction"), a[1:], b[1:]):
        if len(first) != len(second) or any(abs(x - y) > tolerance for x, y in zip(first, second)):
            shown = [round(v, 4) for v in second], [round(v, 4) for v in first]
            return f"{name} {shown[0]} vs {shown[1]}"
    return None


def check_pair_grid(image: Path, label: Path, what: str = "label") -> None:
    """Refuse, from the headers, a label (or mask) that is not on its image's grid; the message names the label."""
    if image.is_dir():  # a DICOM series: its grid is known only once read (check_same_grid does it then)
        return
    difference = grid_difference(read_grid(image), read_grid(label))
    if difference:
        raise CadError(f"{what} grid differs from its image {image.name} ({difference})", label)


def _from_json(path: Path) -> Dataset:
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CadError(f"cannot parse dataset description ({exc})", path) from exc
    if not isinstance(spec, dict):
        raise CadError(f"a dataset description is a JSON object, got {type(spec).__name__}", path)
    entries = spec.get("training")
    if not isinstance(entries, list) or not entries:
        raise CadError("dataset.json has no 'training' list of image/label pairs", path)
    validation = spec.get("validation")
    if validation is not None and (not isinstance(validation, list) or not validation):
        raise CadError("dataset.json 'validation' must be a non-empty list of image/label pairs", path)
    labels = _label_names(spec.get("labels", {}), path)
    modality = spec.get("modality")
    if modality is not None and (not isinstance(modality, dict) or not all(isinstance(v, str)
                                                                            for v in modality.values())):
        raise CadError(f"dataset.json 'modality' must be an object of channel names, e.g. {{\"0\": \"MRI\"}}, got "
                       f"{modality!r}"[:200], path)
    for key in ("name", "licence", "license", "description"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise CadError(f"dataset.json '{key}' must be a string, got {type(spec[key]).__name__}", path)
    cases = _cases(entries, path, "training", labels)
    held_out = _cases(validation, path, "validation", labels) if validation else None
    if held_out and {c.id for c in held_out} & {c.id for c in cases}:
        both = sorted({c.id for c in held_out} & {c.id for c in cases})
        raise CadError(f"dataset.json lists a case in both 'training' and 'validation' ({', '.join(both[:3])})", path)
    if cases and not any(c.weight > 0 for c in cases):  # nothing could ever be drawn
        raise CadError("dataset.json 'training' entries all have weight 0", path)
    if held_out and any(c.pseudo for c in held_out):  # validation scores against pseudo-labels would mean nothing
        raise CadError("dataset.json 'validation' lists a pseudo-labelled case", path)
    first_modality = next(iter(modality.values()), None) if modality else None
    return Dataset(path.parent, cases, labels, first_modality, spec.get("licence") or spec.get("license"),
                   spec.get("name"), held_out)


LABEL_KEY = re.compile(r"0|[1-9][0-9]{0,2}")


def _label_names(labels: Any, path: Path) -> dict[int, str]:
    """``{"0": "background", "1": "liver"}`` -> ``{1: "liver"}``; anything else (nnU-Net v2's ``{"background": 0}``,
    names that are not strings, values a uint8 labelmap cannot hold) is refused naming the key."""
    if not isinstance(labels, dict):
        raise CadError(f"dataset.json 'labels' must be an object {{\"1\": \"name\", ...}}, got "
                       f"{type(labels).__name__}", path)
    names = {}
    for key, name in labels.items():
        if not LABEL_KEY.fullmatch(key) or int(key) >= 255:  # 255: the ignore value of pseudo-labels
            hint = " (labels map values to names, e.g. {\"1\": \"liver\"}, not names to values)" \
                if isinstance(name, int) else ""
            raise CadError(f"dataset.json 'labels' key {key!r} is not a label value 0-254{hint}", path)
        if not isinstance(name, str) or not name.strip():
            raise CadError(f"dataset.json 'labels' entry {key!r} must name the label with a string, got {name!r}",
                           path)
        if int(key) != 0:
            names[int(key)] = name
    return names


def _labels_present(entry: dict, where: str, labels: dict[int, str], path: Path) -> tuple[int, ...] | None:
    """An entry's ``labels_present``: unique label values that the description's ``labels`` names (a value it does not
    name would be masked or scored against nothing, so it is refused, as is the field without ``labels``)."""
    if "labels_present" not in entry:
        return None
    given = entry["labels_present"]
    if not isinstance(given, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in given):
        raise CadError(f"{where}: 'labels_present' must be a list of label values, got {given!r}"[:200], path)
    if not labels:
        raise CadError(f"{where}: 'labels_present' needs the dataset.json 'labels' that name the values", path)
    unknown = sorted({v for v in given if v not in labels})
    if unknown:
        raise CadError(f"{where}: 'labels_present' lists {unknown}, not in 'labels' {sorted(labels)}"[:200], path)
    if len(set(given)) != len(given):
        raise CadError(f"{where}: 'labels_present' lists a value twice ({given})"[:200], path)
    return tuple(sorted(given))


def _cases(entries: list, path: Path, section: str, labels: dict[int, str] | None = None) -> list[Case]:
    cases: list[Case] = []
    seen: dict[str, Path] = {}
    for number, entry in enumerate(entries):
        where = f"dataset.json '{section}' entry {number}"
        if not isinstance(entry, dict):
            raise CadError(f"{where} must be an object with 'image' and 'label', got {entry!r}"[:200], path)
        for key in ("image", "label"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise CadError(f"{where} needs {key!r} as a file path string, got {entry.get(key)!r}"[:200], path)
        if "pseudo" in entry and not isinstance(entry["pseudo"], bool):
            raise CadError(f"{where}: 'pseudo' must be true or false, got {entry['pseudo']!r}", path)
        weight = entry.get("weight", 1.0)
        if (isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight)
                or weight < 0):
            raise CadError(f"{where}: 'weight' must be a finite number >= 0, got {weight!r}"[:200], path)
        image = (path.parent / entry["image"]).resolve()
        label = (path.parent / entry["label"]).resolve()
        for file in (image, label):
            if not file.exists():
                raise CadError(f"{where} refers to a missing file: {file}", path)
        cid = case_id(image)
        if cid in seen:
            raise CadError(f"{where}: case id {cid!r} is listed twice ({seen[cid].name} and {image.name})", path)
        seen[cid] = image
        present = _labels_present(entry, where, labels or {}, path)
        cases.append(Case(cid, image, label, entry.get("pseudo") is True, float(weight), present))
    return cases


def _volumes(folder: Path) -> dict[str, Path]:
    """The volume files of an images/ or labels/ folder by case id; two files with one id are refused."""
    try:
        entries = sorted(p for p in folder.iterdir() if suffix_of(p) in VOLUME_SUFFIXES)
    except OSError as exc:
        raise CadError(f"cannot list folder ({exc.strerror or exc})", folder) from exc
    found: dict[str, Path] = {}
    for entry in entries:
        cid = case_id(entry)
        if cid in found:
            raise CadError(f"two files have the case id {cid!r}: {found[cid].name} and {entry.name}", folder)
        if not entry.is_file():
            raise CadError("is not a readable volume file", entry)
        found[cid] = entry
    return found


def _from_folders(folder: Path) -> Dataset:
    images_dir = next((folder / n for n in ("imagesTr", "images") if (folder / n).is_dir()), None)
    labels_dir = next((folder / n for n in ("labelsTr", "labels") if (folder / n).is_dir()), None)
    if images_dir is None or labels_dir is None:
        raise CadError("expected dataset.json or images/ and labels/ (or imagesTr/ and labelsTr/) folders", folder)
    images, labels = _volumes(images_dir), _volumes(labels_dir)
    if not images:
        raise CadError("no images found", images_dir)
    for cid, image in images.items():
        if cid not in labels:
            raise CadError(f"image {image.name} has no label with the same name", labels_dir)
    for cid, label in labels.items():
        if cid not in images:
            raise CadError(f"label {label.name} has no image with the same name", images_dir)
    return Dataset(folder, [Case(cid, images[cid], labels[cid]) for cid in sorted(images)], {})


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


def dataset_entry(image: str | Path, label: str | Path, pseudo: bool = False,
                  weight: float | None = None, labels_present: tuple[int, ...] | None = None) -> dict[str, Any]:
    """A dataset.json entry; a pseudo-labelled case (self-training) stays marked as one, a sampling weight and a
    partly labelled case's ``labels_present`` kept."""
    return {"image": str(image), "label": str(label), **({"pseudo": True} if pseudo else {}),
            **({"weight": weight} if weight is not None else {}),
            **({"labels_present": list(labels_present)} if labels_present is not None else {})}
