"""Volume nodes to files and their geometry in the engine's (ITK, LPS) convention.

Two Slicer shortcuts are avoided on purpose:

* ``slicer.util.saveNode`` goes through ``slicer.app.coreIOManager()``, which exists only in the Slicer application;
  a ``vtkMRMLVolumeArchetypeStorageNode`` writes the same file and also works on the ``slicer-core`` wheel (what
  MONAIAuto3DSeg and TotalSegmentator do).
* ``slicer.util.itkImageFromVolume`` flips the direction to LPS but copies the RAS origin unchanged, so the ITK
  origin is wrong for any volume whose origin has non-zero R or A (docs/slicer-testing.md §4, kept as a regression
  test). Geometry is therefore converted explicitly here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import slicer
import vtk

ENGINE_VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
"""Formats both Slicer's storage node writes and the engine reads (docs/cli.md, ``cad segment INPUT``)."""

RAS_TO_LPS = (-1.0, -1.0, 1.0)
"""Slicer's RAS and ITK's LPS differ by flipping the first two world axes, for directions and the origin alike."""


class VolumeGeometry(NamedTuple):
    """A volume's grid as SimpleITK/ITK reports it: LPS world coordinates, direction row-major (3×3 flattened)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


def exportVolumeToFile(volumeNode, path: str | os.PathLike[str]) -> Path:
    """Write ``volumeNode`` (voxels and full oblique geometry) to ``path``, uncompressed, for the engine to read.

    Uncompressed because the file is read once, right away, from a local temporary folder: gzip would cost seconds
    on a large CT for nothing. The storage node is not added to the scene, so nothing is left behind in it.
    A parent transform of the node is *not* applied (the file holds the node's local geometry); the caller places
    the result under the same transform.
    """
    path = Path(path)
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("the volume node has no image data to export")
    if not path.name.lower().endswith(ENGINE_VOLUME_SUFFIXES):
        # checked here: the storage node accepts any suffix, then fails in ITK and leaves a TempWrite* folder behind
        raise ValueError(f"{path}: use one of {', '.join(ENGINE_VOLUME_SUFFIXES)}")
    storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storageNode.SetFileName(str(path))
    storageNode.UseCompressionOff()
    if not storageNode.WriteData(volumeNode):
        raise RuntimeError(f"{path}: writing volume {volumeNode.GetName()!r} failed")
    return path


def ijkToRASArray(volumeNode) -> list[list[float]]:
    """The node's IJKToRAS matrix as a 4×4 nested list (columns 0–2: the I, J, K axes in RAS, scaled by spacing)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return [[matrix.GetElement(row, column) for column in range(4)] for row in range(4)]


def volumeGeometry(volumeNode) -> VolumeGeometry:
    """Size, spacing, LPS origin and LPS direction of a volume node, computed from its IJKToRAS matrix.

    IJKToRAS = ``[D·diag(spacing) | origin]`` in RAS; ITK's LPS geometry flips rows 0 and 1 of both the direction
    and the origin. This is what a correctly written file reports, so tests can compare the two.
    """
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None:
        raise ValueError("the volume node has no image data")
    ijkToRAS = ijkToRASArray(volumeNode)
    spacing = tuple(math.sqrt(sum(ijkToRAS[row][column] ** 2 for row in range(3))) for column in range(3))
    if min(spacing) <= 0:
        raise ValueError(f"degenerate IJKToRAS matrix (spacing {spacing})")
    direction = tuple(RAS_TO_LPS[row] * ijkToRAS[row][column] / spacing[column]
                      for row in range(3) for column in range(3))
    origin = tuple(RAS_TO_LPS[row] * ijkToRAS[row][3] for row in range(3))
    size = tuple(int(n) for n in imageData.GetDimensions())
    return VolumeGeometry(size, spacing, origin, direction)  # type: ignore[arg-type]
