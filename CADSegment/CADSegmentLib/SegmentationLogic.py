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
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from CADExtensionLib.command import engineEnvironment, segmentArgv
from CADExtensionLib.engine_job import EngineJobLogic, EngineRun
from CADExtensionLib.engine_job import defaultRunner as defaultRunner  # re-exported: CADSegmentLib's public names
from CADExtensionLib.engine_job import engineErrorLine as engineErrorLine
from CADExtensionLib.model_summary import ModelSummary
from CADExtensionLib.process import TemporaryWorkspace, pythonExecutable
from CADExtensionLib.segmentations import importLabelmapToSegmentation
from CADExtensionLib.volumes import exportVolumeToFile


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


class SegmentationCancelled(RuntimeError):
    """Raised by a blocking ``run`` that ``cancel()`` stopped."""


@dataclass
class _Run(EngineRun):
    """One segmentation: the input node, where the engine writes its labelmap, and the node to fill (or None)."""

    volumeNode: Any
    outputPath: Path
    model: str
    segmentationNode: Any


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
            onFinished: Callable[[Any, str | None], None] | None = None):
        """Segment ``volumeNode``; return the segmentation node (``wait=True``) or None at once (``wait=False``).

        ``onProgress(percent)`` follows the engine's progress bar, ``onLog(line)`` gets every other output line, and
        ``onFinished(segmentationNode, error)`` is called once when the run ends (``error`` None on success,
        ``"cancelled"`` after ``cancel``), in both modes. With ``wait=True`` a failure raises RuntimeError carrying
        the engine's one-line error, and a cancelled run raises :class:`SegmentationCancelled`. ``fast`` runs at the
        card's low resolution (see :func:`fastOption`).
        """
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("the input volume node has no image data")

        def makeRun(workspace: TemporaryWorkspace) -> _Run:
            return _Run(volumeNode, workspace.path / "segmentation.nrrd", str(model), outputSegmentationNode,
                        workspace=workspace, onProgress=onProgress, onLog=onLog, onFinished=onFinished)

        def prepare(run: _Run) -> tuple[list[str], dict[str, str]]:
            inputPath = exportVolumeToFile(volumeNode, run.workspace.path / "input.nrrd")
            argv = segmentArgv(self.python or pythonExecutable(), inputPath, run.outputPath, model, device, overlap,
                               useCascade, fast=fast)
            return argv, engineEnvironment(self.engineFolder, os.environ.get("PYTHONPATH"))

        return self._runJob(makeRun, prepare, wait)

    def _importResult(self, run: _Run):
        """The engine's labelmap into the segmentation node, named and coloured by its sidecar ``OUTPUT.json``."""
        sidecarPath = Path(f"{run.outputPath}.json")
        try:
            sidecar = json.loads(sidecarPath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"segmentation failed: cannot read the engine's sidecar {sidecarPath} ({exc})") \
                from exc
        modelId = str(sidecar.get("model") or Path(run.model).name)
        for warning in sidecar.get("warnings") or []:  # "this scan may not be what the model was made for"
            logging.warning("%s: %s", self.logPrefix, warning)
            if run.onLog:
                run.onLog(f"warning: {warning}")
        return importLabelmapToSegmentation(run.outputPath, sidecar.get("labels", []), run.volumeNode,
                                            run.segmentationNode,
                                            name=f"{run.volumeNode.GetName()} {modelId} segmentation")
