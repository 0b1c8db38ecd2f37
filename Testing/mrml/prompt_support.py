"""Shared by the PromptLogic tests: scenes with volumes, segments and transforms, and a fake prompt backend that
answers with a known mask on the volume's grid (its ``interact`` signature is checked against the real protocol)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from CADExtensionLib.volumes import volumeGeometry
from CADSegmentLib import PromptAnswer, PromptRequest

MaskFunction = Callable[[PromptRequest, np.ndarray, Path | None, Path | None], np.ndarray]


def writeOnVolumeGrid(volumeNode, array: np.ndarray, path: Path, pixel=np.uint8) -> Path:
    """Write a (K, J, I) array with the volume's exact local geometry (LPS, as the engine writes its outputs)."""
    geometry = volumeGeometry(volumeNode)
    image = sitk.GetImageFromArray(array.astype(pixel))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    sitk.WriteImage(image, str(path))
    return path


def localRasToIjk(volumeNode, point) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(matrix)
    return np.array(matrix.MultiplyPoint([*point, 1.0])[:3])


class FakeBackend:
    """Answers every prompt with ``maskFunction(request, volumeIJKToRAS, previousPath, scribblePath)`` (a (K, J, I)
    0/1 array on the volume's grid) written into the prompt's workspace, and records what it was given."""

    def __init__(self, maskFunction: MaskFunction, report: dict | None = None, uncertainty: np.ndarray | None = None,
                 error: BaseException | None = None) -> None:
        self.maskFunction = maskFunction
        self.report = report or {"voxels": 0, "suggested_click": [1.0, 2.0, 3.0], "timings": {"total_s": 0.01}}
        self.uncertainty = uncertainty
        self.error = error
        self.calls: list[dict] = []
        self.workspaces: list[Path] = []

    def interact(self, volumeNode, request: PromptRequest, previousPath: Path | None, scribblePath: Path | None,
                 workspace: Path) -> PromptAnswer:
        workspace = Path(workspace)
        self.workspaces.append(workspace)
        call = {"request": request, "previous": None, "scribble": None}
        if previousPath is not None:
            call["previous"] = sitk.GetArrayFromImage(sitk.ReadImage(str(previousPath)))
        if scribblePath is not None:
            call["scribble"] = sitk.GetArrayFromImage(sitk.ReadImage(str(scribblePath)))
        self.calls.append(call)
        if self.error is not None:
            raise self.error
        mask = self.maskFunction(request, slicer.util.arrayFromVolume(volumeNode), previousPath, scribblePath)
        maskPath = writeOnVolumeGrid(volumeNode, mask, workspace / "mask.nrrd")
        uncertaintyPath = None
        if request.uncertainty and self.uncertainty is not None:
            uncertaintyPath = writeOnVolumeGrid(volumeNode, self.uncertainty, workspace / "uncertainty.nrrd",
                                                np.float32)
        return PromptAnswer(maskPath, dict(self.report, voxels=int(mask.sum())), uncertaintyPath)


def fixedMask(array: np.ndarray) -> MaskFunction:
    return lambda request, volume, previous, scribble: array


def addVolume(array: np.ndarray, ijkToRAS: np.ndarray | None = None, name: str = "volume"):
    return slicer.util.addVolumeFromArray(array.astype(np.float32), np.eye(4) if ijkToRAS is None else ijkToRAS,
                                          name)


def addSegmentation(volumeNode, names=("target",), referenceVolume=None, transformNode=None):
    """A segmentation node (under ``transformNode``) on ``referenceVolume``'s (default: the volume's) geometry, with
    empty segments."""
    scene = volumeNode.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    node.CreateDefaultDisplayNodes()
    if transformNode is not None:
        node.SetAndObserveTransformNodeID(transformNode.GetID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume or volumeNode)
    ids = [node.GetSegmentation().AddEmptySegment("", name) for name in names]
    return node, ids


def paint(segmentationNode, segmentId, volumeNode, array: np.ndarray) -> None:
    """Fill a segment from a (K, J, I) array on the volume's grid (test set-up, not the write path under test)."""
    slicer.util.updateSegmentBinaryLabelmapFromArray(array.astype(np.uint8), segmentationNode, segmentId, volumeNode)


def segmentArray(segmentationNode, segmentId, volumeNode) -> np.ndarray:
    """The segment on the volume's grid, 0/1, (K, J, I)."""
    return (slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0).astype(np.uint8)


def segmentWorldPoints(segmentationNode, segmentId) -> np.ndarray:
    """World RAS of every voxel of the segment's own binary labelmap (its geometry and the node's transform)."""
    labelmap = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)
    extent = labelmap.GetExtent()
    if extent[0] > extent[1]:
        return np.zeros((0, 3))
    from vtk.util.numpy_support import vtk_to_numpy

    values = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
        extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    kji = np.argwhere(values > 0)
    ijk = kji[:, ::-1] + np.array(extent[0::2])
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    toWorld = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(segmentationNode.GetParentTransformNode(), None, toWorld)
    points = []
    for index in ijk:
        local = matrix.MultiplyPoint([*map(float, index), 1.0])[:3]
        points.append(toWorld.TransformPoint(local))
    return np.array(points)


def volumeWorldPoints(volumeNode, array: np.ndarray) -> np.ndarray:
    """World RAS of the voxels of a (K, J, I) array on the volume's grid."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    toWorld = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volumeNode.GetParentTransformNode(), None, toWorld)
    return np.array([toWorld.TransformPoint(matrix.MultiplyPoint([*map(float, kji[::-1]), 1.0])[:3])
                     for kji in np.argwhere(array > 0)])


def linearTransform(scene, rotationDegrees: float, axis, translation) -> object:
    """A linear transform node: rotation about ``axis`` then translation (mm)."""
    transform = vtk.vtkTransform()
    transform.Translate(*translation)
    transform.RotateWXYZ(rotationDegrees, *axis)
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    node.SetMatrixTransformToParent(transform.GetMatrix())
    return node
