"""What the CAD AI Segment Editor effect decides without Qt, kept here so the MRML suite tests it on slicer-core.

* :func:`promptModels` orders the models the effect offers: guided (interactive) networks first, then the generic
  ``prompt-3d``, then every other segmentation model (run on the prompt's region by ``cad interact``).
* :func:`defaultLabel` picks the model label named like the segment being edited.
* :class:`PromptHistory` holds the clicks of one annotation (one volume, segmentation and segment): each prompt sends
  every click so far, and after the first answer the segment itself is the ``--previous`` the network refines.
* :func:`strokesToLabelmap` turns painted strokes (world RAS points, from a slice view) into the ``--scribble``
  labelmap on the volume's grid: 1 = this is the structure, 2 = this is not.

Imports ``slicer`` and ``vtk`` only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import slicer
import vtk

from CADSegmentLib.PromptInputs import labelNamed, worldToLocal

GENERIC_MODEL_ID = "prompt-3d"
FOREGROUND, BACKGROUND = 1, 2
"""Scribble values, as ``cad interact --scribble`` reads them."""


def promptModels(models: Iterable) -> list:
    """Segmentation models in the order the effect lists them: guided networks, the generic model, then the rest
    (plain models through the region path); alphabetical within each group. ``models`` are ``ModelSummary``."""
    segmentation = [m for m in models if m.task == "segmentation"]
    return sorted(segmentation, key=lambda m: (0 if m.guided and m.id != GENERIC_MODEL_ID else
                                                1 if m.id == GENERIC_MODEL_ID else 2, m.displayName.lower()))


def defaultLabel(model, segmentName: str) -> int | None:
    """The label of ``model`` (a ``ModelSummary``) named like the segment (:func:`labelNamed`); the only label of a
    one-label model; else None (the user must choose: guessing would segment the wrong structure)."""
    value = labelNamed(model, segmentName)
    if value is not None:
        return value
    labels = [int(v) for v in model.labels if str(v).isdigit() and int(v) > 0]
    return labels[0] if len(labels) == 1 else None


@dataclass
class PromptHistory:
    """The prompts of one annotation. ``target`` names what they belong to (volume, segmentation, segment ids); a
    prompt for another target starts a new history, so clicks never leak from one segment into another."""

    target: tuple[str, ...] = ()
    positive: list[list[float]] = field(default_factory=list)
    negative: list[list[float]] = field(default_factory=list)
    strokes: list[tuple[int, list[list[float]]]] = field(default_factory=list)  # (FOREGROUND/BACKGROUND, points)
    answered: bool = False  # the engine has written an answer for these prompts: later prompts refine it

    def forTarget(self, target: Sequence[str]) -> PromptHistory:
        """Start over when the target changed; returns self."""
        if tuple(target) != self.target:
            self.target = tuple(target)
            self.clear()
        return self

    def clear(self) -> None:
        self.positive, self.negative, self.strokes, self.answered = [], [], [], False

    def add(self, ras: Sequence[float], include: bool) -> None:
        (self.positive if include else self.negative).append([float(v) for v in ras[:3]])

    def undoLast(self, include: bool) -> None:
        """Forget the last click of that kind (a prompt the engine refused must not stay in the history)."""
        points = self.positive if include else self.negative
        if points:
            points.pop()

    def addStroke(self, value: int, points: Sequence[Sequence[float]]) -> None:
        """A painted stroke (every stroke so far goes with each prompt, as every click does)."""
        if value not in (FOREGROUND, BACKGROUND):
            raise ValueError(f"a stroke value is {FOREGROUND} (foreground) or {BACKGROUND} (background), got {value}")
        self.strokes.append((value, [[float(v) for v in p[:3]] for p in points]))

    def undoLastStroke(self) -> None:
        if self.strokes:
            self.strokes.pop()

    @property
    def canPrompt(self) -> bool:
        """The engine needs something positive: an including click or a foreground stroke."""
        return bool(self.positive) or any(value == FOREGROUND for value, _ in self.strokes)


def strokesToLabelmap(volumeNode, strokes: Sequence[tuple[int, Sequence[Sequence[float]]]],
                      radiusMm: float = 2.0, labelmapNode=None):
    """Rasterise ``strokes`` — ``(FOREGROUND or BACKGROUND, [world RAS points])`` each — into a labelmap node on the
    volume's exact grid (its IJKToRAS, local to its parent transform, as the engine reads the exported volume).

    Each stroke is a tube of radius ``radiusMm`` through its points (sampled every half voxel, so fast mouse moves
    leave no gaps); a later stroke wins where two overlap. The node is created (not added to the scene) unless
    ``labelmapNode`` is given.
    """
    if radiusMm <= 0:
        raise ValueError(f"the stroke radius must be positive, got {radiusMm}")
    for value, _ in strokes:
        if value not in (FOREGROUND, BACKGROUND):
            raise ValueError(f"a stroke value is {FOREGROUND} (foreground) or {BACKGROUND} (background), got {value}")
    imageData = volumeNode.GetImageData()
    dimensions = imageData.GetDimensions()
    labels = vtk.vtkImageData()
    labels.SetDimensions(dimensions)
    labels.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    labels.GetPointData().GetScalars().Fill(0)
    rasToIjk, ijkToRas = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(rasToIjk)
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    spacing = volumeNode.GetSpacing()
    reach = [int(math.ceil(radiusMm / s)) for s in spacing]
    step = min(spacing) / 2.0
    toLocal = worldToLocal(volumeNode)
    for value, points in strokes:
        local = [toLocal.TransformPoint([float(v) for v in p[:3]]) for p in points]
        for centre in _densify(local, step):
            ijk = rasToIjk.MultiplyPoint([*centre, 1.0])[:3]
            base = [int(round(v)) for v in ijk]
            for dk in range(-reach[2], reach[2] + 1):
                for dj in range(-reach[1], reach[1] + 1):
                    for di in range(-reach[0], reach[0] + 1):
                        i, j, k = base[0] + di, base[1] + dj, base[2] + dk
                        if not (0 <= i < dimensions[0] and 0 <= j < dimensions[1] and 0 <= k < dimensions[2]):
                            continue
                        ras = ijkToRas.MultiplyPoint([i, j, k, 1.0])[:3]
                        if math.dist(ras, centre) <= radiusMm:
                            labels.SetScalarComponentFromDouble(i, j, k, 0, value)
    node = labelmapNode if labelmapNode is not None else slicer.vtkMRMLLabelMapVolumeNode()
    node.SetIJKToRASMatrix(ijkToRas)
    node.SetAndObserveImageData(labels)
    return node


def _densify(points: Sequence[Sequence[float]], step: float) -> list[tuple[float, ...]]:
    """The polyline's points with extra ones every ``step`` mm between neighbours."""
    dense: list[tuple[float, ...]] = []
    for index, point in enumerate(points):
        if index:
            previous = points[index - 1]
            count = int(math.dist(previous, point) // step)
            dense += [tuple(a + (b - a) * n / (count + 1) for a, b in zip(previous, point))
                      for n in range(1, count + 1)]
        dense.append(tuple(point))
    return dense
