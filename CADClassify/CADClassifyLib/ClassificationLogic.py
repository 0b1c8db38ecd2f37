"""CADClassify's logic: a volume node and a lesion (a segment or a point) in; calibrated class probabilities in a
table node and a Grad-CAM heatmap volume out, with the engine running in a background process.

Usable without the GUI (scripts, batch, tests)::

    logic = ClassificationLogic()
    result = logic.run(volumeNode, model="my-classifier", segmentationNode=segNode, segmentId="lesion")
    result.predicted, result.probabilities        # "malignant", {"benign": 0.31, "malignant": 0.69}
    result.tableNode                              # Class | Probability | Uncalibrated probability
    showHeatmapOverlay(result.heatmapNode, volumeNode, opacity=0.4)

    logic.run(volumeNode, model="my-classifier", pointRAS=[12.5, -30.0, 8.0], sizeMM=30)  # or a fiducial node

Non-blocking use, cancel and threading are shared with every CADExtension Logic (``CADExtensionLib.engine_job``):
inside the Slicer application the default runner defers its callbacks and the widget calls
:meth:`ClassificationLogic.processEvents` from a ``qt.QTimer``; ``cancel()`` kills the engine's process tree, and no
temporary file nor half-made node remains.

The engine runs as ``python -m cadcore classify ...`` (see ``CADExtensionLib.command.classifyArgv``): the volume is
written through a storage node, a segment is exported to a 0/1 labelmap on the volume's grid (``--mask FILE
--label 1``), a point becomes ``--center`` in the volume's RAS. The engine writes the result JSON and the heatmap on
the input's exact grid; the heatmap node gets the volume's IJKToRAS exactly. Classical-baseline packages give no
heatmap (``heatmapNode`` is None). ``featureTableNode`` lists the hand-crafted features the engine computed on the
ROI (shape, first-order, GLCM texture), the inputs of the classical baseline, whatever the model.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer
import vtk
from CADExtensionLib.command import classifyArgv, engineEnvironment
from CADExtensionLib.engine_job import EngineJobLogic, EngineRun
from CADExtensionLib.process import TemporaryWorkspace, pythonExecutable
from CADExtensionLib.segmentations import (
    exportSegmentToLabelmapFile,
    placeUnderStudy,
    removeNodeAndDependents,
    segmentIdFromNameOrId,
)
from CADExtensionLib.volumes import exportVolumeToFile

from CADClassifyLib.ResultNodes import makeFeatureTableNode, makeHeatmapNode, makeTableNode

REQUIRED_REPORT_KEYS = ("model", "classes", "probabilities", "predicted", "calibrated", "roi", "heatmap",
                        "heatmap_peak_ras")


class ClassificationCancelled(RuntimeError):
    """Raised by a blocking ``run`` that ``cancel()`` stopped."""


@dataclass
class ClassificationResult:
    """What one run produced; the nodes are in the volume's scene (filed under its study when it has one)."""

    probabilities: dict[str, float]
    predicted: str
    report: dict[str, Any]
    tableNode: Any
    heatmapNode: Any = None
    featureTableNode: Any = None
    uncalibratedProbabilities: dict[str, float] = field(default_factory=dict)

    @property
    def heatmapPeakRAS(self) -> list[float] | None:
        """The heatmap's maximum in the volume's RAS (before any parent transform of the volume), or None."""
        return self.report.get("heatmap_peak_ras")


def defaultClassificationModel() -> str:
    """The first classification model in the registry (shipped, then the user folder)."""
    from CADExtensionLib.models import ModelManagerLogic

    models = [m for m in ModelManagerLogic().listModels() if m.task == "classification" and not m.bundle]
    if not models:
        raise ValueError("no classification model is installed; import one (ModelManagerLogic.importModel) or pass "
                         "a model package folder")
    return models[0].id


def pointInVolumeRAS(volumeNode, point) -> list[float]:
    """A point as RAS coordinates of ``volumeNode``'s file (what ``cad classify --center`` expects).

    ``point`` is three world RAS coordinates, or a markups node whose first control point is used (its world
    position). When the volume sits under a transform the point is mapped from world into the volume's own frame.
    """
    if point is None:
        raise ValueError("no point given")
    if hasattr(point, "GetNumberOfControlPoints"):
        if point.GetNumberOfControlPoints() < 1:
            raise ValueError(f"markups node {point.GetName()!r} has no control point")
        world = [0.0, 0.0, 0.0]
        point.GetNthControlPointPositionWorld(0, world)
    else:
        if isinstance(point, (str, bytes)):
            raise ValueError(f"pointRAS must be three numbers, got {point!r}")
        try:
            world = [float(v) for v in point]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"pointRAS must be three numbers, got {point!r}") from exc
    if len(world) != 3 or not all(math.isfinite(v) for v in world):
        raise ValueError(f"pointRAS must be three finite numbers, got {point!r}")
    parent = volumeNode.GetParentTransformNode() if volumeNode is not None else None
    if parent is None:
        return world
    worldToVolume = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, worldToVolume)
    return [float(v) for v in worldToVolume.TransformPoint(world)]


@dataclass
class _Run(EngineRun):
    """One classification: the input node, where the engine writes its result JSON and heatmap (None: no heatmap)."""

    volumeNode: Any
    resultPath: Path
    heatmapPath: Path | None
    model: str


class ClassificationLogic(EngineJobLogic[_Run]):
    """Classify a lesion in a volume node with a CADExtension model; see the module docstring for examples.

    ``isRunning``, ``processEvents`` and ``cancel(timeout=10.0)`` come from :class:`EngineJobLogic`.
    """

    logPrefix = "CADClassify"
    taskName = "classification"
    cancelledError = ClassificationCancelled

    def run(self, volumeNode, model: str | os.PathLike[str] | None = None, segmentationNode=None,
            segmentId: str | None = None, pointRAS=None, sizeMM: float | Sequence[float] | None = None,
            device: str = "cpu", heatmap: bool = True, wait: bool = True,
            onProgress: Callable[[int], None] | None = None, onLog: Callable[[str], None] | None = None,
            onFinished: Callable[[Any, str | None], None] | None = None) -> ClassificationResult | None:
        """Classify a lesion of ``volumeNode``; the result (``wait=True``) or None at once (``wait=False``).

        The lesion is a segment (``segmentationNode`` + ``segmentId``, an ID or a name; optional when the node has
        one segment), or a point (``pointRAS``: three world RAS coordinates or a markups node, with an optional box
        ``sizeMM`` for extent-fitted models), or neither (the whole volume). ``model`` is a registry id or a package
        folder (default: the first classification model installed). ``onProgress(percent)``, ``onLog(line)`` and
        ``onFinished(result, error)`` work as in ``SegmentationLogic.run``; with ``wait=True`` a failure raises
        RuntimeError carrying the engine's one-line error, a cancelled run :class:`ClassificationCancelled`.
        """
        if volumeNode is None or volumeNode.GetImageData() is None or volumeNode.GetScene() is None:
            raise ValueError("the input volume node must be in a scene and have image data")
        if segmentationNode is not None and pointRAS is not None:
            raise ValueError("give either a segment (segmentationNode/segmentId) or a point (pointRAS), not both")
        if segmentId is not None and segmentationNode is None:
            raise ValueError("segmentId needs segmentationNode")
        center = pointInVolumeRAS(volumeNode, pointRAS) if pointRAS is not None else None
        lesionId = segmentIdFromNameOrId(segmentationNode, segmentId) if segmentationNode is not None else None
        model = str(model) if model is not None else defaultClassificationModel()

        def makeRun(workspace: TemporaryWorkspace) -> _Run:
            heatmapPath = workspace.path / "heatmap.nrrd" if heatmap else None
            return _Run(volumeNode, workspace.path / "result.json", heatmapPath, model, workspace=workspace,
                        onProgress=onProgress, onLog=onLog, onFinished=onFinished)

        def prepare(run: _Run) -> tuple[list[str], dict[str, str]]:
            inputPath = run.workspace.path / "input.nrrd"
            maskPath = run.workspace.path / "mask.nrrd" if lesionId is not None else None
            argv = classifyArgv(self.python or pythonExecutable(), inputPath, run.resultPath, model, device,
                                maskPath=maskPath, label=1 if maskPath else None, centerRAS=center, sizeMM=sizeMM,
                                heatmapPath=run.heatmapPath)  # checks the options before anything is written
            exportVolumeToFile(volumeNode, inputPath)
            if maskPath is not None:
                exportSegmentToLabelmapFile(segmentationNode, lesionId, volumeNode, maskPath)
            return argv, engineEnvironment(self.engineFolder, os.environ.get("PYTHONPATH"))

        return self._runJob(makeRun, prepare, wait)

    def _importResult(self, run: _Run) -> ClassificationResult:
        """The result JSON (and heatmap) into table and volume nodes; the bar then shows 100%."""
        report = _readReport(run.resultPath)
        result = _resultNodes(run.volumeNode, report, run.heatmapPath)
        self._reportProgress(run, 100)
        return result


def _readReport(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"classification failed: cannot read the engine's result {path} ({exc})") from exc
    missing = [key for key in REQUIRED_REPORT_KEYS if key not in report] if isinstance(report, dict) else ["all"]
    if missing:
        raise RuntimeError(f"classification failed: the engine's result {path} lacks {', '.join(missing)}")
    return report


def _probabilities(report: Mapping[str, Any], key: str) -> dict[str, float]:
    values = report.get(key) or {}
    return {str(name): float(values[name]) for name in report["classes"] if name in values}


def _resultNodes(volumeNode, report: dict[str, Any], heatmapPath: Path | None) -> ClassificationResult:
    """The table (and heatmap) nodes of one result; nothing is left in the scene if any of it fails."""
    scene = volumeNode.GetScene()
    modelId = str(report.get("model") or "model")
    created = []
    try:
        probabilities = _probabilities(report, "probabilities")
        if list(probabilities) != [str(name) for name in report["classes"]]:
            raise RuntimeError("classification failed: the result's probabilities do not match its classes")
        uncalibrated = _probabilities(report, "probabilities_uncalibrated")
        tableNode = makeTableNode(scene, f"{volumeNode.GetName()} {modelId} classification", report, probabilities,
                               uncalibrated)
        created.append(tableNode)
        heatmapNode = None
        if heatmapPath is not None and report.get("heatmap"):
            heatmapNode = makeHeatmapNode(volumeNode, heatmapPath, f"{volumeNode.GetName()} {modelId} heatmap")
            created.append(heatmapNode)
        for node in created:
            placeUnderStudy(volumeNode, node)
        featureTableNode = None
        if report.get("features"):
            featureTableNode = makeFeatureTableNode(scene, f"{volumeNode.GetName()} {modelId} features", report)
            created.append(featureTableNode)
        return ClassificationResult(probabilities, str(report["predicted"]), report, tableNode, heatmapNode,
                                    featureTableNode, uncalibrated)
    except BaseException:
        for node in created:
            removeNodeAndDependents(node)
        raise

