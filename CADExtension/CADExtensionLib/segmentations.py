"""Engine labelmaps into segmentation nodes: named, coloured, terminology-tagged segments on the input's grid.

The path follows MONAIAuto3DSeg/TotalSegmentator: read the labelmap, give it a temporary colour table holding the
model's label names and colours, import it with the Segmentations logic, then set name, colour and terminology of
each segment from the model's labels, set the reference geometry (needed for DICOM SEG export and for editing on the
input's grid) and file the result under the input's study in the subject hierarchy.

The reverse direction, one segment to a labelmap file on a volume's grid (``cad classify --mask``), is
:func:`exportSegmentToLabelmapFile`.

Existing segments are never overwritten silently: importing a label whose name is already taken in the target node
adds the new segment as "Name (2)", "Name (3)", ... unless ``overwrite=True`` is passed, in which case the existing
segment(s) of that name are replaced. Temporary nodes are removed, and a half-done import is rolled back (the node
removed if it was created here, the added segments removed otherwise), in every outcome.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import slicer
import vtk

SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
EMPTY_TERMINOLOGY = "~^^~^^~^^~~^^~^^"
_CODE_PARTS = ("category", "type", "type_modifier", "region", "region_modifier")
_FORBIDDEN = ("~", "^", "|", "\n", "\r")


def terminologyEntry(label: Mapping[str, Any]) -> str:
    """Slicer's ``TerminologyEntry`` string for a label: the format of ``cadcore.io.labelmaps.terminology_entry``.

    Copied (not imported) because the glue must not import the engine. Seven parts joined by ``~``: context,
    category, type, type modifier, region context, region, region modifier; each code ``scheme^code^meaning``. A
    label without terminology gets the empty entry (no invented codes); a string is taken as an entry already made.
    """
    terminology = label.get("terminology")
    if not terminology:
        return EMPTY_TERMINOLOGY
    if isinstance(terminology, str):
        return terminology
    name = label.get("name", label.get("value"))
    if not isinstance(terminology, Mapping) or not terminology.get("category") or not terminology.get("type"):
        raise ValueError(f"label {name!r}: terminology needs at least 'category' and 'type' codes")
    codes = {part: _code(terminology.get(part), f"label {name!r} terminology {part}") for part in _CODE_PARTS}
    context = _clean(str(terminology.get("context", SLICER_CONTEXT)), f"label {name!r} terminology context")
    regionContext = _clean(str(terminology.get("region_context", REGION_CONTEXT)), f"label {name!r} region context")
    return "~".join((context, codes["category"], codes["type"], codes["type_modifier"],
                     regionContext, codes["region"], codes["region_modifier"]))


def _code(code: Any, what: str) -> str:
    if not code:
        return "^^"
    if not isinstance(code, Mapping) or not all(isinstance(code.get(k), str) and code[k] for k in ("scheme", "code")):
        raise ValueError(f"{what}: expected {{'scheme': ..., 'code': ..., 'meaning': ...}}, got {code!r}")
    return "^".join(_clean(str(code.get(k, "")), what) for k in ("scheme", "code", "meaning"))


def _clean(text: str, what: str) -> str:
    bad = [c for c in _FORBIDDEN if c in text]
    if bad:
        raise ValueError(f"{what} {text!r} contains {', '.join(map(repr, bad))}, which Slicer's format cannot hold")
    return text.strip()


def uniqueSegmentName(name: str, taken: Iterable[str]) -> str:
    """``name`` if free, else ``name (2)``, ``name (3)``, ...: the suffix rule for names already in the node."""
    taken = set(taken)
    if name not in taken:
        return name
    number = 2
    while f"{name} ({number})" in taken:
        number += 1
    return f"{name} ({number})"


def _normalizedLabels(labels: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Foreground labels sorted by value with int values, a name, an RGB in 0–1 and the terminology entry string."""
    result = []
    for label in labels:
        value = int(label["value"])
        if value == 0:
            continue  # background is not a segment
        color = label.get("color")
        rgb = [float(c) for c in color] if color else [0.5, 0.5, 0.5]
        if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
            raise ValueError(f"label {value}: color must be three floats in 0..1, got {color!r}")
        name = str(label.get("name") or f"Label_{value}")
        result.append({"value": value, "name": name, "color": rgb, "terminology": terminologyEntry(label)})
    values = [label["value"] for label in result]
    if len(set(values)) != len(values) or not all(1 <= v <= 255 for v in values):
        raise ValueError(f"label values must be distinct integers in 1..255, got {values}")
    return sorted(result, key=lambda label: label["value"])


def _colorTable(scene, labels: list[dict[str, Any]]):
    """A hidden user colour table naming each label value, so the import names segments after the model's labels."""
    table = slicer.vtkMRMLColorTableNode()
    table.SetName(scene.GenerateUniqueName("__CADExtension_labels"))
    table.SetHideFromEditors(True)
    table.SetSaveWithScene(False)
    table.SetTypeToUser()
    table.SetNumberOfColors(max(label["value"] for label in labels) + 1)
    table.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
    for label in labels:
        table.SetColor(label["value"], label["name"], *label["color"], 1.0)
    scene.AddNode(table)
    return table


def removeNodeAndDependents(node) -> None:
    """Remove a node with its display and storage nodes (the core scene does not remove them by itself)."""
    scene = node.GetScene() if node is not None else None
    if scene is None:
        return
    dependents = []
    for getCount, getNth in (("GetNumberOfDisplayNodes", "GetNthDisplayNode"),
                             ("GetNumberOfStorageNodes", "GetNthStorageNode")):
        if hasattr(node, getCount):
            dependents += [getattr(node, getNth)(i) for i in range(getattr(node, getCount)())]
    scene.RemoveNode(node)
    for dependent in dependents:
        if dependent is not None and dependent.GetScene() is not None:
            scene.RemoveNode(dependent)


def placeUnderStudy(volumeNode, segmentationNode) -> bool:
    """Put the segmentation's subject-hierarchy item under the study holding the volume; False if there is none.

    In the Slicer application every node gets an item automatically; on the bare MRML core (slicer-core) it does
    not, so a missing item is created here.
    """
    scene = volumeNode.GetScene()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene else None
    if shNode is None:
        return False
    volumeItem = shNode.GetItemByDataNode(volumeNode)
    studyLevel = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
    study = shNode.GetItemAncestorAtLevel(volumeItem, studyLevel) if volumeItem else 0
    if not study:
        return False
    segmentationItem = shNode.GetItemByDataNode(segmentationNode)
    if segmentationItem:
        shNode.SetItemParent(segmentationItem, study)
    else:
        shNode.CreateItem(study, segmentationNode)
    return True


def _atSceneTop(segmentationNode) -> bool:
    """True when the node has no subject-hierarchy item or sits directly under the scene (the user did not file it)."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(segmentationNode.GetScene())
    item = shNode.GetItemByDataNode(segmentationNode) if shNode else 0
    return not item or shNode.GetItemParent(item) == shNode.GetSceneItemID()


def importLabelmapToSegmentation(labelmapPath: str | os.PathLike[str], labels: Sequence[Mapping[str, Any]],
                                 volumeNode, segmentationNode=None, overwrite: bool = False,
                                 name: str | None = None):
    """Import an engine labelmap file into ``segmentationNode`` (a new node when None) and return the node.

    ``labels`` is the sidecar's or model card's list (``value``, ``name``, ``color`` 0–1, optional ``terminology``
    as a dict or entry string). Every label gets a segment, in value order; a label the result does not contain gets
    an empty segment, so the node always lists the model's structures. Segment names that already exist in the
    node get a `` (2)`` suffix unless ``overwrite`` (see the module docstring). A new node is named ``name`` (default:
    the volume's name + "segmentation"), gets the volume's parent transform, and is filed under the volume's study;
    a given node is moved there only if it sits at the top of the hierarchy.
    """
    if volumeNode is None or volumeNode.GetScene() is None:
        raise ValueError("the reference volume node must be in a scene")
    scene = volumeNode.GetScene()
    wanted = _normalizedLabels(labels)
    if not wanted:
        raise ValueError("no foreground labels to import")
    created = segmentationNode is None
    temporary = []
    added: list[str] = []
    try:
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode",
                                               scene.GenerateUniqueName("__CADExtension_labelmap"))
        temporary.append(labelmapNode)
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()  # not in the scene: nothing to clean up
        storageNode.SetFileName(str(labelmapPath))
        if not os.path.isfile(labelmapPath) or not storageNode.ReadData(labelmapNode):
            raise RuntimeError(f"{labelmapPath}: cannot read the segmentation result")
        colorTable = _colorTable(scene, wanted)
        temporary.append(colorTable)
        labelmapNode.CreateDefaultDisplayNodes()
        labelmapNode.GetDisplayNode().SetAndObserveColorNodeID(colorTable.GetID())

        if created:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(name or f"{volumeNode.GetName()} segmentation"))
            segmentationNode.CreateDefaultDisplayNodes()
            if volumeNode.GetTransformNodeID():
                segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        before = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                labelmapNode, segmentationNode, ""):
            raise RuntimeError(f"{labelmapPath}: importing the labelmap into {segmentationNode.GetName()!r} failed")
        added = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
                 if segmentation.GetNthSegmentID(i) not in before]
        byValue = {segmentation.GetSegment(segmentId).GetLabelValue(): segmentId for segmentId in added}
        for label in wanted:
            if label["value"] not in byValue:  # the model found nothing of this structure
                segmentId = segmentation.AddEmptySegment("", label["name"], label["color"])
                added.append(segmentId)
                byValue[label["value"]] = segmentId

        taken = {segmentation.GetSegment(segmentId).GetName() for segmentId in before}
        replaced = []
        for label in wanted:
            segment = segmentation.GetSegment(byValue[label["value"]])
            if overwrite:
                replaced += [segmentId for segmentId in before
                             if segmentation.GetSegment(segmentId).GetName() == label["name"]]
                segmentName = label["name"]
            else:
                segmentName = uniqueSegmentName(label["name"], taken)
            taken.add(segmentName)
            segment.SetName(segmentName)
            segment.SetNameAutoGenerated(False)
            segment.SetColor(*label["color"])
            segment.SetColorAutoGenerated(False)
            segment.SetTag(segment.GetTerminologyEntryTagName(), label["terminology"])
        for index, label in enumerate(wanted):  # model order after the segments that were there before
            segmentation.SetSegmentIndex(byValue[label["value"]], len(before) + index)
        for segmentId in replaced:  # last, once nothing else can fail: the old segment is only gone on success
            segmentation.RemoveSegment(segmentId)
        if created or _atSceneTop(segmentationNode):
            placeUnderStudy(volumeNode, segmentationNode)
        return segmentationNode
    except BaseException:
        if created and segmentationNode is not None:
            removeNodeAndDependents(segmentationNode)
        elif segmentationNode is not None:
            for segmentId in added:
                segmentationNode.GetSegmentation().RemoveSegment(segmentId)
        raise
    finally:
        for node in temporary:
            removeNodeAndDependents(node)


def _nodeIds(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


@contextmanager
def removingAddedNodes(scene) -> Iterator[None]:
    """Remove every node added to ``scene`` inside the block (temporary labelmaps, display nodes, colour tables),
    in every outcome."""
    before = _nodeIds(scene)
    try:
        yield
    finally:
        for nodeId in _nodeIds(scene) - before:
            node = scene.GetNodeByID(nodeId)
            if node is not None:
                scene.RemoveNode(node)


def writeLabelmapNode(labelmapNode, path: str | os.PathLike[str], what: str) -> Path:
    """Write a labelmap node to ``path`` uncompressed through a storage node kept out of the scene."""
    path = Path(path)
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()  # not in the scene: nothing to clean up
    storageNode.SetFileName(str(path))
    storageNode.UseCompressionOff()
    if not storageNode.WriteData(labelmapNode):
        raise RuntimeError(f"{path}: writing {what} failed")
    return path


def segmentIdFromNameOrId(segmentationNode, segment: str | None = None) -> str:
    """The ID of ``segment`` (an ID, else a segment name) in the node; with None, the node's only segment.

    Raises ValueError naming the segments there are when the choice is missing or ambiguous.
    """
    if segmentationNode is None or segmentationNode.GetSegmentation() is None:
        raise ValueError("no segmentation node given")
    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    names = [segmentation.GetSegment(segmentId).GetName() for segmentId in ids]
    if segment is None:
        if len(ids) == 1:
            return ids[0]
        raise ValueError(f"{segmentationNode.GetName()!r} has {len(ids)} segments ({', '.join(names) or 'none'}); "
                         "say which one is the lesion")
    if segment in ids:
        return segment
    matches = [segmentId for segmentId, name in zip(ids, names) if name == segment]
    if len(matches) == 1:
        return matches[0]
    problem = "several segments are" if matches else "no segment is"
    raise ValueError(f"{problem} named {segment!r} in {segmentationNode.GetName()!r} (segments: "
                     f"{', '.join(names) or 'none'})")


def exportSegmentToLabelmapFile(segmentationNode, segmentId: str, referenceVolumeNode,
                                path: str | os.PathLike[str]):
    """Write one segment as a 0/1 labelmap on ``referenceVolumeNode``'s exact grid (``cad classify --mask``).

    Goes through ``ExportSegmentsToLabelmapNode`` with the volume as reference, so the mask has the volume's
    IJKToRAS and dimensions whatever the segmentation's own geometry is. Every node the export adds to the scene
    (the labelmap, its display node and the colour table the Segmentations logic makes for it) is removed again in
    every outcome. Raises ValueError for an unknown or empty segment, RuntimeError if the export or write fails.
    """
    path = Path(path)
    scene = referenceVolumeNode.GetScene() if referenceVolumeNode is not None else None
    if scene is None or referenceVolumeNode.GetImageData() is None:
        raise ValueError("the reference volume node must be in a scene and have image data")
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None:
        raise ValueError(f"{segmentationNode.GetName()!r} has no segment with ID {segmentId!r}")
    with removingAddedNodes(scene):
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode",
                                               scene.GenerateUniqueName("__CADExtension_mask"))
        segmentIds = vtk.vtkStringArray()
        segmentIds.InsertNextValue(segmentId)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, segmentIds, labelmapNode, referenceVolumeNode):
            raise RuntimeError(f"exporting segment {segment.GetName()!r} to a labelmap failed")
        dimensions = referenceVolumeNode.GetImageData().GetDimensions()
        if labelmapNode.GetImageData() is None or labelmapNode.GetImageData().GetDimensions() != dimensions:
            raise RuntimeError(f"segment {segment.GetName()!r} was not exported on the volume's grid")
        array = slicer.util.arrayFromVolume(labelmapNode)
        if not array.any():
            raise ValueError(f"segment {segment.GetName()!r} is empty on the volume's grid")
        array[array != 0] = 1  # one lesion, label 1, whatever label value the export gave it
        slicer.util.arrayFromVolumeModified(labelmapNode)
        return writeLabelmapNode(labelmapNode, path, f"the mask of segment {segment.GetName()!r}")
