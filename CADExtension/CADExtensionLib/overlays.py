"""Engine maps shown over the input volume: a scalar map (Grad-CAM heatmap, segmentation uncertainty) read onto the
volume's exact grid, given a heat colour map, and shown as the slice views' foreground layer.

Why shared here: CADClassify's Grad-CAM heatmap and CADSegment's uncertainty map are the same kind of result (a
float image the engine writes on the input's grid) and must be read the same careful way (the reader must not flip
a left-handed grid; the geometry is checked, then copied bit for bit from the volume). CADClassify's
``CADClassifyLib.ResultNodes`` delegates its heatmap node and overlay here.
Imports ``slicer`` and ``vtk`` only.
"""

from __future__ import annotations

import os
from pathlib import Path

import slicer
import vtk

from CADExtensionLib.segmentations import removeNodeAndDependents
from CADExtensionLib.volumes import ijkToRASArray

HEATMAP_COLOR_NODE_IDS = (
    "vtkMRMLColorTableNodeFileColdToHotRainbow.txt",
    "vtkMRMLColorTableNodeFileInferno.txt",
)
"""Slicer's own file-based colour tables for a heat map, in order of preference (the Slicer application loads them;
the bare MRML core has none, and then :func:`heatmapColorNode` generates one)."""

GENERATED_HEATMAP_COLORS = "CADExtension heatmap"
_INFERNO = ((0.0, (0.001, 0.000, 0.014)), (0.25, (0.341, 0.062, 0.429)), (0.5, (0.735, 0.216, 0.330)),
            (0.75, (0.988, 0.645, 0.040)), (1.0, (0.988, 0.998, 0.645)))
"""Control points of matplotlib's "inferno" (black → purple → orange → pale yellow), interpolated linearly."""

GEOMETRY_TOLERANCE = 1e-4
"""Largest difference (mm) allowed between the volume's IJKToRAS and the map file's before it is refused: the
engine writes the input's grid, so anything larger means a contract break, not rounding."""


def heatmapColorNode(scene):
    """The colour node for heat maps: Slicer's ColdToHotRainbow or Inferno when loaded, else a generated
    inferno-like table (created once per scene, found again by name)."""
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


def showOverlay(overlayNode, volumeNode, opacity: float = 0.5) -> bool:
    """Show ``volumeNode`` as background and ``overlayNode`` as foreground, at ``opacity``, in every slice view.

    Acts on all ``vtkMRMLSliceCompositeNode``s of the scene; returns False (and changes nothing) when there is no
    overlay or no slice view (the bare MRML core has none).
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if overlayNode is None or volumeNode is None or volumeNode.GetScene() is None:
        return False
    scene = volumeNode.GetScene()
    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                  for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    for composite in composites:
        composite.SetBackgroundVolumeID(volumeNode.GetID())
        composite.SetForegroundVolumeID(overlayNode.GetID())
        composite.SetForegroundOpacity(float(opacity))
    return bool(composites)


def loadMapOnVolumeGrid(volumeNode, path: str | os.PathLike[str], name: str, what: str = "map",
                        window: tuple[float, float] | None = None, thresholdFraction: float = 0.01):
    """Read an engine map into a new scalar volume with exactly ``volumeNode``'s geometry and a heat colour map.

    ``what`` names the map in errors ("the uncertainty map is not on the volume's grid"). The display window is
    ``window`` (e.g. (0, 1) for a normalised entropy, so two cases compare), else 0 to the map's maximum; values
    below ``thresholdFraction`` of the window's top are transparent, so the overlay colours only what matters.
    RuntimeError when the file is unreadable or not on the volume's grid; the new node is removed in every failure.
    """
    path = Path(path)
    scene = volumeNode.GetScene()
    name = scene.GenerateUniqueName(name)
    mapNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    try:
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()  # not in the scene: nothing to clean up
        storageNode.SetFileName(str(path))
        # By default the reader reverses K (voxels and IJKToRAS) of a left-handed grid: the same physical image, but
        # no longer the volume's grid. Keep the file's indexing so the map lies voxel for voxel on the volume.
        storageNode.ForceRightHandedIJKCoordinateSystemOff()
        if not path.is_file() or not storageNode.ReadData(mapNode):
            raise RuntimeError(f"cannot read the {what} {path}")
        mapNode.SetName(name)  # reading may rename the node after the file
        expected = volumeNode.GetImageData().GetDimensions()
        if mapNode.GetImageData() is None or mapNode.GetImageData().GetDimensions() != expected:
            raise RuntimeError(f"the {what} is not on the volume's grid ({path})")
        difference = max(abs(a - b) for rowA, rowB in zip(ijkToRASArray(mapNode), ijkToRASArray(volumeNode))
                         for a, b in zip(rowA, rowB))
        if difference > GEOMETRY_TOLERANCE:
            raise RuntimeError(f"the {what}'s geometry differs from the volume's by {difference:.3g} mm ({path})")
        # The volume's spacing, origin and directions bit for bit. Setting values that are already nearly equal is
        # ignored (the read ones differ in the 16th digit), so each is first set to something clearly different.
        directions = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASDirectionMatrix(directions)
        mapNode.SetIJKToRASDirections(*(-directions.GetElement(r, c) for r in range(3) for c in range(3)))
        mapNode.SetSpacing(*(2.0 * value + 1.0 for value in volumeNode.GetSpacing()))
        mapNode.SetOrigin(*(value + 1.0 for value in volumeNode.GetOrigin()))
        mapNode.CopyOrientation(volumeNode)
        if volumeNode.GetTransformNodeID():
            mapNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        mapNode.CreateDefaultDisplayNodes()
        displayNode = mapNode.GetDisplayNode()
        displayNode.SetAndObserveColorNodeID(heatmapColorNode(scene).GetID())
        low, high = window if window is not None else (0.0, float(mapNode.GetImageData().GetScalarRange()[1]))
        high = max(float(high), float(low) + 1e-6)
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevelMinMax(float(low), high)
        displayNode.SetThreshold(float(low) + thresholdFraction * (high - float(low)), high)
        displayNode.ApplyThresholdOn()
        return mapNode
    except BaseException:
        removeNodeAndDependents(mapNode)
        raise
