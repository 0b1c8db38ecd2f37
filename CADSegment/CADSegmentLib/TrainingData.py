"""Training data for "Improve model": (volume, segmentation) pairs or a folder, as a ``dataset.json`` for ``cad train``.

Scene pairs are exported the way the engine's inputs always are: the volume through a storage node (full oblique
geometry, never ``itkImageFromVolume``), and the segmentation as a labelmap built *on the volume's own grid*: its
IJKToRAS is copied from the volume and each segment is resampled onto that grid by the Segmentations logic, so the
two files agree voxel for voxel whatever the segmentation's own geometry is.

Label values come from the model, matched **by segment name** (case and surrounding spaces ignored), never from
segment order or colour: "Posterior hippocampus" gets the value the model card gives "Posterior hippocampus". A
segment whose name is no label of the model is an error that lists the model's label names, and so is a model
label with no segment (its voxels would silently teach the model "background"; an empty segment of that name says
"absent in this case"). Overlapping segments of different labels are refused too: a voxel has one label.

At least two pairs are needed: the last one (or the last fifth) validates, the rest train. A folder is either
``images/`` + ``labels/`` (or ``imagesTr/`` + ``labelsTr/``), paired by file name as the engine does, or a folder
with a ``dataset.json`` (its own ``validation`` list is kept); label values there must already be the model's.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import slicer
import vtk
from CADExtensionLib.segmentations import removingAddedNodes, writeLabelmapNode
from CADExtensionLib.volumes import exportVolumeToFile

MINIMUM_PAIRS = 2
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""The image suffixes the engine pairs in ``images/`` + ``labels/`` (``cadcore.io.images``); a ``.seg.nrrd`` is not
one."""


def modelLabels(card: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The card's foreground labels (value ≠ 0) sorted by value, refused when two share a name (matching by name
    would be ambiguous)."""
    labels = sorted((dict(label) for label in card.get("labels", [])
                     if isinstance(label, Mapping) and "name" in label and int(label.get("value", 0)) != 0),
                    key=lambda label: int(label["value"]))
    keys = [_key(label["name"]) for label in labels]
    if not labels:
        raise ValueError(f"model {card.get('id', '')!r} lists no labels to fine-tune")
    if len(set(keys)) != len(keys):
        raise ValueError(f"model {card.get('id', '')!r} has two labels of the same name; segments cannot be matched")
    return labels


def _key(name: str) -> str:
    return str(name).strip().casefold()


def _labelList(labels: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{label['name']!r}" for label in labels)


def segmentLabelValues(segmentationNode, labels: Sequence[Mapping[str, Any]], modelId: str = "") -> dict[str, int]:
    """Segment ID → the model's label value, by segment name; ValueError naming the problem otherwise."""
    if segmentationNode is None or segmentationNode.GetSegmentation() is None:
        raise ValueError("no segmentation node given")
    segmentation = segmentationNode.GetSegmentation()
    byName = {_key(label["name"]): int(label["value"]) for label in labels}
    values: dict[str, int] = {}
    unknown = []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        name = segmentation.GetSegment(segmentId).GetName()
        if _key(name) in byName:
            values[segmentId] = byName[_key(name)]
        else:
            unknown.append(name)
    where = f"{segmentationNode.GetName()!r}"
    model = f"model {modelId!r}" if modelId else "the model"
    if unknown:
        raise ValueError(f"{where}: segment(s) {', '.join(map(repr, unknown))} match no label of {model}; rename "
                         f"each to one of the model's labels ({_labelList(labels)}) or remove it")
    missing = [label for label in labels if int(label["value"]) not in values.values()]
    if missing:
        raise ValueError(f"{where} has no segment named {_labelList(missing)} (labels of {model}: "
                         f"{_labelList(labels)}); add an empty segment of that name if the structure is absent here")
    return values


def exportLabelmapOnVolumeGrid(segmentationNode, values: Mapping[str, int], volumeNode,
                               path: str | os.PathLike[str]) -> Path:
    """Write the segments as one labelmap (segment → ``values[segmentId]``) on ``volumeNode``'s exact grid.

    The labelmap node gets the volume's IJKToRAS matrix and dimensions by construction; each segment is resampled
    onto that grid by ``arrayFromSegmentBinaryLabelmap`` with the volume as reference. Every node the export adds
    (temporary labelmaps and their display nodes) is removed in every outcome.
    """
    import numpy as np  # lazily: the glue's top level imports slicer and vtk only

    path = Path(path)
    scene = volumeNode.GetScene()
    shape = slicer.util.arrayFromVolume(volumeNode).shape[:3]
    segmentation = segmentationNode.GetSegmentation()
    with removingAddedNodes(scene):
        labels = np.zeros(shape, dtype=np.uint8)
        owner: dict[int, str] = {}
        for segmentId, value in values.items():
            name = segmentation.GetSegment(segmentId).GetName()
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
            if mask is None or mask.shape != shape:
                raise RuntimeError(f"segment {name!r} could not be resampled onto {volumeNode.GetName()!r}'s grid")
            mask = mask > 0
            clash = mask & (labels != 0) & (labels != value)
            if clash.any():
                other = owner[int(labels[clash][0])]
                raise ValueError(f"{segmentationNode.GetName()!r}: segments {other!r} and {name!r} overlap in "
                                 f"{int(clash.sum())} voxels; a voxel can have one label only")
            labels[mask] = value
            owner.setdefault(int(value), name)
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("__CADtrain"))
        ijkToRAS = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRAS)
        labelmapNode.SetIJKToRASMatrix(ijkToRAS)
        slicer.util.updateVolumeFromArray(labelmapNode, labels)
        return writeLabelmapNode(labelmapNode, path, f"the labelmap of {segmentationNode.GetName()!r}")


def checkPairs(pairs: Sequence[tuple[Any, Any]], labels: Sequence[Mapping[str, Any]], modelId: str = "",
               ) -> list[dict[str, int]]:
    """Check every pair before anything is written; the segment → value map of each. Raises ValueError."""
    if len(pairs) < MINIMUM_PAIRS:
        raise ValueError(f"fine-tuning needs at least {MINIMUM_PAIRS} (volume, segmentation) pairs, one of them to "
                         f"validate on; {len(pairs)} given")
    seen = set()
    result = []
    for volumeNode, segmentationNode in pairs:
        if volumeNode is None or volumeNode.GetImageData() is None or volumeNode.GetScene() is None:
            raise ValueError("every pair needs a volume with image data in the scene")
        if segmentationNode is None:
            raise ValueError(f"no segmentation paired with {volumeNode.GetName()!r}")
        key = (volumeNode.GetID(), segmentationNode.GetID())
        if key in seen:
            raise ValueError(f"the pair ({volumeNode.GetName()!r}, {segmentationNode.GetName()!r}) is listed twice")
        seen.add(key)
        if volumeNode.GetTransformNodeID() != segmentationNode.GetTransformNodeID():
            raise ValueError(f"{volumeNode.GetName()!r} and {segmentationNode.GetName()!r} are under different "
                             "transforms; harden the transforms (or put both under the same one) first")
        result.append(segmentLabelValues(segmentationNode, labels, modelId))
    return result


def validationCount(total: int) -> int:
    """How many cases validate when the data names no split: the last fifth, at least one, leaving one to train."""
    return min(max(1, total // 5), total - 1)


def _caseName(index: int, name: str) -> str:
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('._-')[:40] or 'case'}"


def exportPairs(pairs: Sequence[tuple[Any, Any]], values: Sequence[Mapping[str, int]],
                folder: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Export checked pairs into ``folder/images`` + ``folder/labels``; their dataset entries (relative paths)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    entries = []
    for index, ((volumeNode, segmentationNode), segmentValues) in enumerate(zip(pairs, values), start=1):
        name = _caseName(index, volumeNode.GetName())
        exportVolumeToFile(volumeNode, folder / "images" / f"{name}.nrrd")
        exportLabelmapOnVolumeGrid(segmentationNode, segmentValues, volumeNode, folder / "labels" / f"{name}.nrrd")
        entries.append({"image": f"images/{name}.nrrd", "label": f"labels/{name}.nrrd"})
    return entries


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".seg.nrrd") or not path.is_file():
        return None
    return next((suffix for suffix in VOLUME_SUFFIXES if name.endswith(suffix)), None)


def _caseId(path: Path) -> str:
    name = path.name[: -len(_suffix(path) or path.suffix)]
    return name[:-5] if name.endswith("_0000") else name  # nnU-Net channel suffix, as the engine strips it


def _folderEntries(folder: Path) -> list[dict[str, str]]:
    images = next((folder / n for n in ("imagesTr", "images") if (folder / n).is_dir()), None)
    labels = next((folder / n for n in ("labelsTr", "labels") if (folder / n).is_dir()), None)
    if images is None or labels is None:
        raise ValueError(f"{folder}: expected a dataset.json, or images/ and labels/ (or imagesTr/ and labelsTr/) "
                         "folders of volumes paired by file name")
    byId = {_caseId(p): p for p in labels.iterdir() if _suffix(p)}
    entries = []
    for image in sorted(p for p in images.iterdir() if _suffix(p)):
        if _caseId(image) not in byId:
            raise ValueError(f"{image}: no label file of the same name in {labels}")
        entries.append({"image": str(image.resolve()), "label": str(byId[_caseId(image)].resolve())})
    return entries


def _jsonEntries(path: Path, items: Any, what: str) -> list[dict[str, str]]:
    if not isinstance(items, list):
        raise ValueError(f"{path}: '{what}' must be a list of {{image, label}} entries")
    entries = []
    for item in items:
        if not isinstance(item, Mapping) or not item.get("image") or not item.get("label"):
            raise ValueError(f"{path}: every '{what}' entry needs an image and a label, got {item!r}")
        files = [(path.parent / str(item[key])).resolve() for key in ("image", "label")]
        for file in files:
            if not file.is_file():
                raise ValueError(f"{path}: '{what}' refers to a missing file {file}")
        entries.append({"image": str(files[0]), "label": str(files[1])})
    return entries


def _checkDatasetLabels(path: Path, spec: Mapping[str, Any], labels: Sequence[Mapping[str, Any]],
                        modelId: str) -> None:
    """The dataset's own label names must be the model's, with the same values (its files are not rewritten)."""
    byName = {_key(label["name"]): int(label["value"]) for label in labels}
    given = spec.get("labels") or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"{path}: 'labels' must map values to names")
    for value, name in given.items():
        if not str(value).strip().isdigit():
            raise ValueError(f"{path}: label key {value!r} is not a label value")
        if int(value) == 0:
            continue
        if byName.get(_key(name)) != int(value):
            where = f"is label {byName[_key(name)]}" if _key(name) in byName else "is not a label"
            raise ValueError(f"{path}: label {value} {name!r} {where} of model {modelId!r} (its labels: "
                             + ", ".join(f"{label['value']} = {label['name']!r}" for label in labels) + ")")


def folderDataset(source: str | os.PathLike[str], labels: Sequence[Mapping[str, Any]], modelId: str = "",
                  ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(training, validation) entries with absolute paths from a folder or a ``dataset.json``."""
    source = Path(source)
    if source.is_dir() and (source / "dataset.json").is_file():
        source = source / "dataset.json"
    if source.is_file():
        try:
            spec = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{source}: cannot read the dataset description ({exc})") from exc
        if not isinstance(spec, Mapping):
            raise ValueError(f"{source}: not a dataset description (a JSON object)")
        _checkDatasetLabels(source, spec, labels, modelId)
        training = _jsonEntries(source, spec.get("training"), "training")
        validation = _jsonEntries(source, spec["validation"], "validation") if spec.get("validation") else []
    elif source.is_dir():
        training, validation = _folderEntries(source), []
    else:
        raise ValueError(f"{source}: no such folder or dataset.json")
    total = len(training) + len(validation)
    if total < MINIMUM_PAIRS:
        raise ValueError(f"{source}: fine-tuning needs at least {MINIMUM_PAIRS} image/label pairs, one of them to "
                         f"validate on; {total} found")
    if not validation:
        count = validationCount(len(training))
        training, validation = training[:-count], training[-count:]
    if not training:
        raise ValueError(f"{source}: every case is in 'validation'; at least one must be left to train on")
    return training, validation


def writeDataset(folder: str | os.PathLike[str], training: Iterable[Mapping[str, str]],
                 validation: Iterable[Mapping[str, str]], labels: Sequence[Mapping[str, Any]],
                 name: str = "", modality: str | None = None) -> tuple[Path, Path]:
    """Write ``dataset.json`` (explicit ``validation`` split, the model's label names) and ``labels.json`` (the
    model's full labels, for ``cad train --labels``) into ``folder``; returns both paths."""
    folder = Path(folder)
    spec: dict[str, Any] = {
        "name": name,
        "labels": {"0": "background", **{str(int(label["value"])): str(label["name"]) for label in labels}},
        "training": [dict(entry) for entry in training],
        "validation": [dict(entry) for entry in validation],
    }
    if modality:
        spec["modality"] = {"0": modality}
    folder.mkdir(parents=True, exist_ok=True)
    datasetPath, labelsPath = folder / "dataset.json", folder / "labels.json"
    datasetPath.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    labelsPath.write_text(json.dumps([dict(label) for label in labels], indent=2) + "\n", encoding="utf-8")
    return datasetPath, labelsPath
