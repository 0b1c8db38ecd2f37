"""CADSegment's logic: volume node in, segmentation node out, with the engine running in a background process.

Usable without the GUI (scripts, batch, tests), as Slicer's template asks of every Logic::

    logic = SegmentationLogic()
    segmentationNode = logic.run(volumeNode, model="hippocampus-unet", device="cpu")

Non-blocking (what the module widget does). Inside the Slicer application the default runner queues its callbacks,
and the widget calls ``logic.processEvents()`` from a ``qt.QTimer`` so progress, log and the final import run on the
main thread (MRML and Qt must not be touched from the runner's reader thread)::

    logic.run(volumeNode, wait=False, onProgress=bar.setValue, onLog=print,
              onFinished=lambda node, error: ...)
    ...
    logic.cancel()  # kills the engine's process tree; no temp files, no half-made nodes remain

The engine runs as ``python -m cadcore segment ...`` (see ``CADExtensionLib.command``); on success its sidecar
``OUTPUT.json`` supplies the labels (names, colours, terminology) for the import.

``uncertainty=True`` also asks for the voxel uncertainty map (``--uncertainty``): it is read onto the input's exact
grid as a heat-coloured volume, referenced from the segmentation node (role :data:`UNCERTAINTY_REFERENCE`), and the
sidecar's per-label summary goes to ``onLog``. The engine's out-of-distribution warnings (``warning: ...`` on its
stderr, and the sidecar's ``warnings``) reach ``onWarning`` once each, as they come, so a panel can show them
prominently; the last run's list is also kept on the segmentation node (attribute :data:`WARNINGS_ATTRIBUTE`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from CADExtensionLib.command import engineEnvironment, segmentArgv
from CADExtensionLib.engine_job import EngineJobLogic, EngineRun
from CADExtensionLib.engine_job import defaultRunner as defaultRunner  # re-exported: CADSegmentLib's public names
from CADExtensionLib.engine_job import engineErrorLine as engineErrorLine
from CADExtensionLib.model_summary import ModelSummary
from CADExtensionLib.overlays import loadMapOnVolumeGrid
from CADExtensionLib.process import TemporaryWorkspace, pythonExecutable
from CADExtensionLib.segmentations import importLabelmapToSegmentation, removeNodeAndDependents
from CADExtensionLib.volumes import exportVolumeToFile

UNCERTAINTY_REFERENCE = "CADSegment.uncertainty"
"""Node reference role from a segmentation node to the uncertainty map of the run that last filled it."""
WARNINGS_ATTRIBUTE = "CADSegment.warnings"
"""Segmentation node attribute: the engine's warnings of the run that last filled it, as a JSON list."""
MAP_ATTRIBUTE = "CADSegment.map"
"""Attribute of a volume the module made from an engine map (value ``"uncertainty"``), so it is not offered as an
input (batch) by mistake."""
WARNING_PREFIX = "warning:"
UNCERTAINTY_WINDOW = (0.0, 1.0)
"""The map is a normalised entropy: a fixed window makes two cases' overlays comparable."""
UNCERTAINTY_THRESHOLD = 0.05
"""Below this normalised entropy the overlay is transparent: the confident bulk of the volume stays uncoloured."""


def uncertaintySummaryLines(summary: Mapping[str, Any] | None) -> list[str]:
    """The sidecar's ``uncertainty`` object as log lines: the whole-volume mean, then the mean per label.

    Lenient about missing fields (an older or foreign sidecar), because a log line must not fail a finished run.
    """
    if not isinstance(summary, Mapping):
        return []
    method = str(summary.get("method") or "")
    passes = f"{summary['passes']} passes" if summary.get("passes") and "pass" not in method else ""
    how = ", ".join(part for part in (method, passes) if part)  # the engine's method text may name the passes
    mean = summary.get("mean")
    first = "uncertainty" + (f" ({how})" if how else "") + ": "
    first += f"mean {float(mean):.3f} over the volume" if isinstance(mean, (int, float)) else "no volume mean"
    lines = [first + " (normalised entropy, 0 = certain, 1 = undecided)"]
    for label in summary.get("labels") or []:
        if isinstance(label, Mapping) and isinstance(label.get("mean"), (int, float)):
            name = label.get("name") or f"label {label.get('value')}"
            lines.append(f"uncertainty of {name}: mean {float(label['mean']):.3f}")
    return lines


def fastSpacing(model: ModelSummary | Mapping[str, Any] | None) -> list[float] | None:
    """The low resolution a model card names for ``cad segment --fast`` (``"fast": {"spacing": [x, y, z]}``), else
    None. ``model`` is a card or the model's :class:`ModelSummary` (both carry ``fast``). The test is the engine's own
    (three positive numbers), so the panel offers the option exactly for the models the engine runs it with."""
    fast = model.fast if isinstance(model, ModelSummary) else (model or {}).get("fast")
    spacing = fast.get("spacing") if isinstance(fast, Mapping) else None
    if not isinstance(spacing, (list, tuple)) or len(spacing) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in spacing):
        return None
    return [float(v) for v in spacing]


def fastOption(model: ModelSummary | Mapping[str, Any] | None) -> tuple[bool, str]:
    """(enabled, tooltip) of the panel's "Fast (low resolution)" check box for the selected model.

    Disabled, with the reason, when no model is selected or its card names no fast resolution: the engine would
    refuse ``--fast`` for it, and a box that silently did nothing would mislead.
    """
    if not model:
        return False, "Select a model first."
    spacing = fastSpacing(model)
    if spacing is None:
        modelId = model.id if isinstance(model, ModelSummary) else model.get("id", "")
        return False, f"Model {modelId!r} has no fast (low-resolution) mode: its model card names no 'fast' " \
                      "resolution."
    millimetres = " × ".join(f"{v:g}" for v in spacing)
    return True, f"Segment at the model's low resolution ({millimetres} mm): much faster on a CPU, coarser borders."


def uncertaintyOption(model: ModelSummary | None) -> tuple[bool, str]:
    """(enabled, tooltip) of the panel's "Uncertainty map" check box for the selected model: off, saying why, for no
    model, a MONAI bundle and a model with its own pipeline (the engine refuses ``--uncertainty`` for both)."""
    if model is None:
        return False, "Select a model first."
    if model.bundle:
        return False, f"Model {model.id!r} is a MONAI bundle: it runs with its own inferer, which gives no " \
                      "uncertainty map."
    if model.pipeline:
        return False, f"Model {model.id!r} runs its own {model.pipeline} pipeline, without test-time " \
                      "augmentation: it gives no uncertainty map."
    return True, "Also compute where the model is unsure (normalised voxel entropy, 0 = certain, 1 = undecided) " \
                 "and show it as an overlay; the mean per label goes to the log. Several passes: slower."


class SegmentationCancelled(RuntimeError):
    """Raised by a blocking ``run`` that ``cancel()`` stopped."""


@dataclass
class _Run(EngineRun):
    """One segmentation: the input node, where the engine writes its labelmap, and the node to fill (or None);
    where it writes the uncertainty map (or None), and the warnings reported so far."""

    volumeNode: Any
    outputPath: Path
    model: str
    segmentationNode: Any
    uncertaintyPath: Path | None = None
    onWarning: Callable[[str], None] | None = None
    warnings: list[str] = field(default_factory=list)


class SegmentationLogic(EngineJobLogic[_Run]):
    """Segment a volume node with a CADExtension model; see the module docstring for examples.

    ``isRunning``, ``processEvents`` and ``cancel(timeout=10.0)`` come from :class:`EngineJobLogic`.
    """

    logPrefix = "CADSegment"
    taskName = "segmentation"
    cancelledError = SegmentationCancelled

    def run(self, volumeNode, model: str = "hippocampus-unet", device: str = "cpu", outputSegmentationNode=None,
            wait: bool = True, overlap: float | None = None, useCascade: bool = True, fast: bool = False,
            onProgress: Callable[[int], None] | None = None, onLog: Callable[[str], None] | None = None,
            onFinished: Callable[[Any, str | None], None] | None = None, uncertainty: bool = False,
            strict: bool = False, onWarning: Callable[[str], None] | None = None):
        """Segment ``volumeNode``; return the segmentation node (``wait=True``) or None at once (``wait=False``).

        ``onProgress(percent)`` follows the engine's progress bar, ``onLog(line)`` gets every other output line, and
        ``onFinished(segmentationNode, error)`` is called once when the run ends (``error`` None on success,
        ``"cancelled"`` after ``cancel``), in both modes. With ``wait=True`` a failure raises RuntimeError carrying
        the engine's one-line error, and a cancelled run raises :class:`SegmentationCancelled`. ``fast`` runs at the
        card's low resolution (see :func:`fastOption`). ``uncertainty``, ``strict`` and ``onWarning(text)``: see
        the module docstring (``strict``: a scan the model was not made for is refused instead of warned about).
        """
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("the input volume node has no image data")

        def makeRun(workspace: TemporaryWorkspace) -> _Run:
            run = _Run(volumeNode, workspace.path / "segmentation.nrrd", str(model), outputSegmentationNode,
                       workspace.path / "uncertainty.nrrd" if uncertainty else None, onWarning,
                       workspace=workspace, onProgress=onProgress, onFinished=onFinished)
            run.onLog = functools.partial(self._onEngineLine, run, onLog)  # picks out the engine's warnings
            return run

        def prepare(run: _Run) -> tuple[list[str], dict[str, str]]:
            inputPath = exportVolumeToFile(volumeNode, run.workspace.path / "input.nrrd")
            argv = segmentArgv(self.python or pythonExecutable(), inputPath, run.outputPath, model, device, overlap,
                               useCascade, fast=fast, uncertaintyPath=run.uncertaintyPath, strict=strict)
            return argv, engineEnvironment(self.engineFolder, os.environ.get("PYTHONPATH"))

        return self._runJob(makeRun, prepare, wait)

    def _onEngineLine(self, run: _Run, onLog: Callable[[str], None] | None, line: str) -> None:
        """Every non-progress output line: a ``warning: ...`` line is reported as a warning, then all are logged."""
        if line.strip().lower().startswith(WARNING_PREFIX):
            self._warn(run, line.strip()[len(WARNING_PREFIX):].strip())
        if onLog:
            onLog(line)

    @staticmethod
    def _warn(run: _Run, text: str) -> bool:
        """Report a warning once (stderr first, the sidecar repeats it); False if it was already reported."""
        if not text or text in run.warnings:
            return False
        run.warnings.append(text)
        if run.onWarning:
            run.onWarning(text)
        return True

    def _importResult(self, run: _Run):
        """The engine's labelmap into the segmentation node, named and coloured by its sidecar ``OUTPUT.json``; the
        uncertainty map (when asked for) read first, so a broken map leaves no half-imported segmentation."""
        sidecarPath = Path(f"{run.outputPath}.json")
        try:
            sidecar = json.loads(sidecarPath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"segmentation failed: cannot read the engine's sidecar {sidecarPath} ({exc})") \
                from exc
        modelId = str(sidecar.get("model") or Path(run.model).name)
        for warning in sidecar.get("warnings") or []:  # "this scan may not be what the model was made for"
            if self._warn(run, str(warning)):  # not already seen on the engine's stderr
                logging.warning("%s: %s", self.logPrefix, warning)
                if run.onLog:
                    run.onLog(f"warning: {warning}")
        mapNode = None
        if run.uncertaintyPath is not None:
            try:
                mapNode = loadMapOnVolumeGrid(run.volumeNode, run.uncertaintyPath,
                                              f"{run.volumeNode.GetName()} {modelId} uncertainty",
                                              what="uncertainty map", window=UNCERTAINTY_WINDOW,
                                              thresholdFraction=UNCERTAINTY_THRESHOLD)
            except RuntimeError as exc:
                raise RuntimeError(f"segmentation failed: {exc}") from exc
            mapNode.SetAttribute(MAP_ATTRIBUTE, "uncertainty")
        try:
            node = importLabelmapToSegmentation(run.outputPath, sidecar.get("labels", []), run.volumeNode,
                                                run.segmentationNode,
                                                name=f"{run.volumeNode.GetName()} {modelId} segmentation")
        except BaseException:
            if mapNode is not None:
                removeNodeAndDependents(mapNode)
            raise
        node.SetAttribute(WARNINGS_ATTRIBUTE, json.dumps(run.warnings))
        node.RemoveNodeReferenceIDs(UNCERTAINTY_REFERENCE)  # a reused node must not point at an older run's map
        if mapNode is not None:
            node.SetNodeReferenceID(UNCERTAINTY_REFERENCE, mapNode.GetID())
            for line in uncertaintySummaryLines(sidecar.get("uncertainty")):
                logging.info("%s: %s", self.logPrefix, line)
                if run.onLog:
                    run.onLog(line)
        return node
