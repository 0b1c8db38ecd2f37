"""MRML nodes that show a classification result: the probability and feature tables, and the heatmap volume with
its colour map and slice-view overlay (split from ``ClassificationLogic`` to keep each file small)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import slicer
import vtk
from CADExtensionLib.segmentations import removeNodeAndDependents
from CADExtensionLib.volumes import ijkToRASArray

HEATMAP_COLOR_NODE_IDS = (
    "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
    "vtkMRMLColorTableNodeFileInferno.txt",
)
"""Slicer's own file-based colour tables for a heatmap, in order of preference (the Slicer application loads them;
the bare MRML core has none, and then :func:`heatmapColorNode` generates one)."""

GENERATED_HEATMAP_COLORS = "CADExtension heatmap"
_INFERNO = ((0.0, (0.001, 0.000, 0.014)), (0.25, (0.341, 0.062, 0.429)), (0.5, (0.735, 0.216, 0.330)),
            (0.75, (0.988, 0.645, 0.040)), (1.0, (0.988, 0.998, 0.645)))
"""Control points of matplotlib's "inferno" (black → purple → orange → pale yellow), interpolated linearly."""

GEOMETRY_TOLERANCE = 1e-4
"""Largest difference (mm) allowed between the volume's IJKToRAS and the heatmap file's before it is refused: the
engine writes the input's grid, so anything larger means a contract break, not rounding."""


def heatmapColorNode(scene):
    """The colour node for heatmaps: Slicer's ColdToHotRainbow or Inferno when loaded, else a generated inferno-like
    table (created once per scene, found again by name)."""
    for nodeId in HEATMAP_COLOR_NODE_IDS:
        node = scene.GetNodeByID(nodeId)
        if node is not None:
            return node
    existing = scene.GetFirstNodeByName(GENERATED_HEATMAP_COLORS)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    table = slicer.vtkMRMLColorTableNode()
    table.SetName(GENERATED_HEATMAP_COLORS)
    table.SetTypeToUser()
    count = 256
    table.SetNumberOfColors(count)
    for index in range(count):
        position = index / (count - 1)
        for (start, low), (end, high) in zip(_INFERNO, _INFERNO[1:]):
            if position <= end:
                weight = (position - start) / (end - start)
                rgb = [a + weight * (b - a) for a, b in zip(low, high)]
                break
        table.SetColor(index, f"{position:.3f}", *rgb, 1.0)
    scene.AddNode(table)
    return table

def showHeatmapOverlay(heatmapNode, volumeNode, opacity: float = 0.5) -> bool:
    """Show ``volumeNode`` as background and ``heatmapNode`` as foreground, at ``opacity``, in every slice view.

    Acts on all ``vtkMRMLSliceCompositeNode``s of the scene; returns False (and changes nothing) when there is no
    heatmap (baseline models) or no slice view (the bare MRML core has none).
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if heatmapNode is None or volumeNode is None or volumeNode.GetScene() is None:
        return False
    scene = volumeNode.GetScene()
    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                  for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    for composite in composites:
        composite.SetBackgroundVolumeID(volumeNode.GetID())
        composite.SetForegroundVolumeID(heatmapNode.GetID())
        composite.SetForegroundOpacity(float(opacity))
    return bool(composites)

def makeTableNode(scene, name: str, report: Mapping[str, Any], probabilities: Mapping[str, float],
               uncalibrated: Mapping[str, float]):
    """Class | Probability | Uncalibrated probability, one row per class in the model's order."""
    tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    classes = vtk.vtkStringArray()
    classes.SetName("Class")
    calibrated = vtk.vtkDoubleArray()
    calibrated.SetName("Probability")
    raw = vtk.vtkDoubleArray()
    raw.SetName("Uncalibrated probability")
    for className, probability in probabilities.items():
        classes.InsertNextValue(className)
        calibrated.InsertNextValue(probability)
        raw.InsertNextValue(uncalibrated.get(className, float("nan")))
    for column in (classes, calibrated, raw):
        tableNode.AddColumn(column)
    temperature = report.get("temperature")
    tableNode.SetColumnDescription("Probability", f"calibrated (temperature {temperature})" if report.get(
        "calibrated") else "not calibrated (the model card has no temperature)")
    tableNode.SetColumnDescription("Uncalibrated probability", "softmax of the network's logits")
    tableNode.SetAttribute("CADClassify.model", str(report.get("model")))
    tableNode.SetAttribute("CADClassify.modelVersion", str(report.get("model_version")))
    tableNode.SetAttribute("CADClassify.predicted", str(report["predicted"]))
    tableNode.SetAttribute("CADClassify.roi", json.dumps(report.get("roi")))
    return tableNode

def makeFeatureTableNode(scene, name: str, report: Mapping[str, Any]):
    """Feature | Group | Value for the ROI's hand-crafted features, in the engine's order."""
    tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    names, groups, values = vtk.vtkStringArray(), vtk.vtkStringArray(), vtk.vtkDoubleArray()
    names.SetName("Feature")
    groups.SetName("Group")
    values.SetName("Value")
    for feature, value in report["features"].items():
        group, _, short = feature.partition("_")
        names.InsertNextValue(short or feature)
        groups.InsertNextValue(group)
        values.InsertNextValue(float(value))
    for column in (names, groups, values):
        tableNode.AddColumn(column)
    tableNode.SetAttribute("CADClassify.model", str(report.get("model")))
    return tableNode

def makeHeatmapNode(volumeNode, path: Path, name: str):
    """Read the engine's heatmap into a new scalar volume with exactly the volume's geometry and a heat colour map."""
    scene = volumeNode.GetScene()
    name = scene.GenerateUniqueName(name)
    heatmapNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    try:
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()  # not in the scene: nothing to clean up
        storageNode.SetFileName(str(path))
        # By default the reader reverses K (voxels and IJKToRAS) of a left-handed grid: the same physical image, but
        # no longer the volume's grid. Keep the file's indexing so the heatmap lies voxel for voxel on the volume.
        storageNode.ForceRightHandedIJKCoordinateSystemOff()
        if not path.is_file() or not storageNode.ReadData(heatmapNode):
            raise RuntimeError(f"classification failed: cannot read the heatmap {path}")
        heatmapNode.SetName(name)  # reading may rename the node after the file
        expected = volumeNode.GetImageData().GetDimensions()
        if heatmapNode.GetImageData() is None or heatmapNode.GetImageData().GetDimensions() != expected:
            raise RuntimeError(f"classification failed: the heatmap is not on the volume's grid ({path})")
        difference = max(abs(a - b) for rowA, rowB in zip(ijkToRASArray(heatmapNode), ijkToRASArray(volumeNode))
                         for a, b in zip(rowA, rowB))
        if difference > GEOMETRY_TOLERANCE:
            raise RuntimeError(f"classification failed: the heatmap's geometry differs from the volume's by "
                               f"{difference:.3g} mm ({path})")
        # The volume's spacing, origin and directions bit for bit. Setting directions that are already nearly equal
        # is ignored (the read ones differ in the 17th digit), so they are first set to something clearly different.
        directions = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASDirectionMatrix(directions)
        heatmapNode.SetIJKToRASDirections(*(-directions.GetElement(r, c) for r in range(3) for c in range(3)))
        heatmapNode.CopyOrientation(volumeNode)
        if volumeNode.GetTransformNodeID():
            heatmapNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        heatmapNode.CreateDefaultDisplayNodes()
        displayNode = heatmapNode.GetDisplayNode()
        displayNode.SetAndObserveColorNodeID(heatmapColorNode(scene).GetID())
        high = max(float(heatmapNode.GetImageData().GetScalarRange()[1]), 1e-6)
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevelMinMax(0.0, high)
        # outside the ROI the heatmap is 0: threshold it away so the overlay only colours what was explained
        displayNode.SetThreshold(0.01 * high, high)
        displayNode.ApplyThresholdOn()
        return heatmapNode
    except BaseException:
        removeNodeAndDependents(heatmapNode)
        raise
