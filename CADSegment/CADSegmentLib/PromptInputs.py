"""What a prompt is made of, in the engine's terms: the model's label named like a segment, world points and ROIs in
the volume's local frame (the exported file's), and scribbles on the volume's grid. Used by
:class:`~CADSegmentLib.PromptLogic.PromptLogic`; imports ``slicer``, ``vtk`` and CADExtensionLib only."""

from __future__ import annotations

from pathlib import Path

import slicer
import vtk
from CADExtensionLib.models import ModelError, ModelManagerLogic
from CADExtensionLib.volumes import exportVolumeToFile


def modelLabelForSegment(segmentName: str, model: str, modelManager: ModelManagerLogic | None = None) -> int:
    """The model's label value named like the segment (case-insensitive); ValueError naming the labels if none is.

    ``model`` is a registry id or a package folder."""
    manager = modelManager or ModelManagerLogic()
    try:
        summary = manager.model(str(model))
    except ModelError:
        folder = Path(model)
        found = [entry for entry in ModelManagerLogic(folder.parent, folder.parent).listModels()
                 if folder.is_dir() and Path(entry.path).resolve() == folder.resolve()]
        if not found:
            raise
        summary = found[0]
    value = labelNamed(summary, segmentName)
    if value is not None:
        return value
    names = ", ".join(f"{value} = {name}" for value, name in summary.labels.items() if value != "0") or "none"
    raise ValueError(f"segment {segmentName!r} is named like none of model {summary.id!r}'s labels ({names}); "
                     "name the segment like one of them or pass label=")


def labelNamed(summary, segmentName: str) -> int | None:
    """The label value (> 0) of a ``ModelSummary`` named like the segment; case, spaces, ``_`` and ``-`` ignored
    ("Left hippocampus" = "left_hippocampus")."""
    def key(text: str) -> str:
        return "".join(text.casefold().split()).replace("_", "").replace("-", "")

    for value, name in sorted(summary.labels.items(), key=lambda item: item[0]):
        if value.isdigit() and int(value) > 0 and key(name) == key(segmentName or ""):
            return int(value)
    return None


def worldToLocal(node) -> vtk.vtkGeneralTransform:
    """World RAS → the node's local RAS (the inverse of its parent transforms; identity without one)."""
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, node.GetParentTransformNode(), transform)
    return transform


def roiBoxInVolume(volumeNode, roi) -> tuple[float, ...]:
    """``cad interact --box`` for a world ROI: two opposite corners in the volume's local RAS.

    ``roi`` is a ``vtkMRMLMarkupsROINode`` (its box, with its own rotation and transforms) or world-RAS bounds
    ``[R0, A0, S0, R1, A1, S1]``. The engine cuts its region as the box of voxel indices spanned by the two corners,
    so a box that is rotated relative to the volume's voxel axes (a rotated ROI, an oblique volume) is replaced by its
    axis-aligned bounding box *in the volume's voxel frame*, clipped to the volume; the corners sent are that box's.
    """
    if hasattr(roi, "GetObjectToWorldMatrix"):
        objectToWorld = roi.GetObjectToWorldMatrix()
        half = [size / 2.0 for size in roi.GetSize()]
        corners = [objectToWorld.MultiplyPoint([sx * half[0], sy * half[1], sz * half[2], 1.0])[:3]
                   for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    else:
        values = [float(v) for v in roi]
        if len(values) != 6:
            raise ValueError(f"roi must be a markups ROI node or [R0, A0, S0, R1, A1, S1], got {roi!r}")
        corners = [(r, a, s) for r in values[0::3] for a in values[1::3] for s in values[2::3]]
    toLocal = worldToLocal(volumeNode)
    rasToIJK = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(rasToIJK)
    indices = [rasToIJK.MultiplyPoint([*toLocal.TransformPoint(corner), 1.0])[:3] for corner in corners]
    dimensions = volumeNode.GetImageData().GetDimensions()
    low = [max(min(index[axis] for index in indices), 0.0) for axis in range(3)]
    high = [min(max(index[axis] for index in indices), dimensions[axis] - 1.0) for axis in range(3)]
    if any(lo > hi for lo, hi in zip(low, high)):
        raise ValueError(f"the ROI does not overlap volume {volumeNode.GetName()!r}")
    ijkToRAS = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRAS)
    first, second = (ijkToRAS.MultiplyPoint([*corner, 1.0])[:3] for corner in (low, high))
    return (*first, *second)


def exportScribble(volumeNode, scribble, folder: Path) -> Path:
    """Write a scribble labelmap for ``cad interact --scribble``; ValueError unless it lies on the volume's grid."""
    if not scribble.IsA("vtkMRMLLabelMapVolumeNode") or scribble.GetImageData() is None:
        raise ValueError("scribble must be a labelmap volume node with image data (1 = structure, 2 = not it)")
    a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    scribble.GetIJKToRASMatrix(a)
    volumeNode.GetIJKToRASMatrix(b)
    if scribble.GetImageData().GetDimensions() != volumeNode.GetImageData().GetDimensions() or any(
            abs(a.GetElement(r, c) - b.GetElement(r, c)) > 1e-6 for r in range(4) for c in range(4)):
        raise ValueError(f"scribble {scribble.GetName()!r} is not on volume {volumeNode.GetName()!r}'s grid")
    return exportVolumeToFile(scribble, folder / "scribble.nrrd")
