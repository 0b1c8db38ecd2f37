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

import collections
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from CADExtensionLib.command import engineEnvironment, segmentArgv
from CADExtensionLib.command import engineFolder as defaultEngineFolder
from CADExtensionLib.process import (
    CANCELLED,
    ExitCode,
    ProcessRunner,
    SubprocessRunner,
    TemporaryWorkspace,
    parseProgress,
    pythonExecutable,
)
from CADExtensionLib.segmentations import importLabelmapToSegmentation
from CADExtensionLib.volumes import exportVolumeToFile

_ERROR_LINE = re.compile(r"^cad(?: [\w-]+)?: error: ")


def fastSpacing(model: Mapping[str, Any] | None) -> list[float] | None:
    """The low resolution a model card names for ``cad segment --fast`` (``"fast": {"spacing": [x, y, z]}``), else
    None. ``model`` is a card or a model-list entry (both carry ``fast``). The test is the engine's own (three
    positive numbers), so the panel offers the option exactly for the models the engine runs it with."""
    fast = (model or {}).get("fast")
    spacing = fast.get("spacing") if isinstance(fast, Mapping) else None
    if not isinstance(spacing, (list, tuple)) or len(spacing) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in spacing):
        return None
    return [float(v) for v in spacing]


def fastOption(model: Mapping[str, Any] | None) -> tuple[bool, str]:
    """(enabled, tooltip) of the panel's "Fast (low resolution)" check box for the selected model.

    Disabled, with the reason, when no model is selected or its card names no fast resolution: the engine would
    refuse ``--fast`` for it, and a box that silently did nothing would mislead.
    """
    if not model:
        return False, "Select a model first."
    spacing = fastSpacing(model)
    if spacing is None:
        return False, f"Model {model.get('id', '')!r} has no fast (low-resolution) mode: its model card names no " \
                      "'fast' resolution."
    millimetres = " × ".join(f"{v:g}" for v in spacing)
    return True, f"Segment at the model's low resolution ({millimetres} mm): much faster on a CPU, coarser borders."


class SegmentationCancelled(RuntimeError):
    """Raised by a blocking ``run`` that ``cancel()`` stopped."""


def engineErrorLine(lines: Sequence[str], exitCode: ExitCode) -> str:
    """The engine's one-line error (``cad segment: error: FILE: problem``), else the last line, else the exit code."""
    for line in reversed(lines):
        if _ERROR_LINE.match(line.strip()):
            return line.strip()
    for line in reversed(lines):
        if line.strip() and parseProgress(line) is None:
            return line.strip()
    return f"engine exited with code {exitCode}"


def defaultRunner() -> SubprocessRunner:
    """A :class:`SubprocessRunner`, deferring callbacks inside the Slicer application so that MRML is only touched
    on the main thread (see :meth:`SegmentationLogic.processEvents`), calling them directly elsewhere."""
    import slicer

    return SubprocessRunner(deferCallbacks=hasattr(slicer, "app"))


@dataclass
class _Run:
    """State of one run, shared by the calling thread, the runner's callbacks and ``cancel``."""

    workspace: TemporaryWorkspace
    volumeNode: Any
    outputPath: Path
    model: str
    segmentationNode: Any
    onProgress: Callable[[int], None] | None
    onLog: Callable[[str], None] | None
    onFinished: Callable[[Any, str | None], None] | None
    state: str = "running"  # running → importing → done, or running → cancelled
    lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    progress: int = -1


class SegmentationLogic:
    """Segment a volume node with a CADExtension model; see the module docstring for examples."""

    def __init__(self, runner: ProcessRunner | None = None, engineFolder: str | os.PathLike[str] | None = None,
                 python: str | None = None, temporaryFolder: str | os.PathLike[str] | None = None) -> None:
        self.runner: ProcessRunner = runner if runner is not None else defaultRunner()
        self.engineFolder = Path(engineFolder) if engineFolder else defaultEngineFolder()
        self.python = python
        self.temporaryFolder = temporaryFolder
        self._lock = threading.Lock()
        self._current: _Run | None = None
        self._inCallback = threading.local()

    def isRunning(self) -> bool:
        return self._current is not None

    def processEvents(self) -> int:
        """Deliver the runner's queued callbacks (progress, log, import on completion) on the calling thread.

        Inside Slicer the default runner defers its callbacks, so the module widget calls this from a ``qt.QTimer``
        on the main thread while :meth:`isRunning`; a blocking ``run`` does it by itself. Returns how many ran.
        """
        dispatch = getattr(self.runner, "dispatchPendingCallbacks", None)
        return dispatch() if dispatch is not None else 0

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
        with self._lock:
            if self._current is not None:
                raise RuntimeError("a segmentation is already running; cancel it or wait for it first")
            workspace = TemporaryWorkspace(prefix="CADSegment-", parent=self.temporaryFolder)
            run = _Run(workspace, volumeNode, workspace.path / "segmentation.nrrd", str(model), outputSegmentationNode,
                       onProgress, onLog, onFinished)
            self._current = run
        try:
            inputPath = exportVolumeToFile(volumeNode, workspace.path / "input.nrrd")
            argv = segmentArgv(self.python or pythonExecutable(), inputPath, run.outputPath, model, device, overlap,
                               useCascade, fast=fast)
            env = engineEnvironment(self.engineFolder, os.environ.get("PYTHONPATH"))
            logging.info("CADSegment: running %s", " ".join(argv))
            self.runner.start(argv, env, lambda line: self._onLine(run, line),
                              None if wait else (lambda code: self._onFinishedAsync(run, code)))
        except BaseException:
            self._end(run)
            raise
        if not wait:
            return None
        try:
            code = self.runner.wait()
        except BaseException:  # e.g. Ctrl-C in a script: stop the engine too, leave nothing behind
            self.cancel()
            self._end(run)
            raise
        try:
            node = self._finish(run, code)
        except Exception as exc:
            self._notify(run, None, CANCELLED if isinstance(exc, SegmentationCancelled) else str(exc))
            raise
        self._notify(run, node, None)
        return node

    def cancel(self, timeout: float = 10.0) -> bool:
        """Stop the current run: kill the engine's process tree, remove its temporary files. False if too late.

        Once the result is being imported (a fraction of a second at the end) cancelling would leave a half-made
        node, so it is refused.
        """
        with self._lock:
            run = self._current
            if run is None or run.state != "running":
                return False
            run.state = "cancelled"
        self.runner.cancel()
        if not getattr(self._inCallback, "active", False):  # waiting inside a runner callback would deadlock
            self.runner.wait(timeout)
        self._end(run)  # normally done already by the finished callback; not if nobody dispatched it
        return True

    def _onLine(self, run: _Run, line: str) -> None:
        self._inCallback.active = True
        try:
            run.lines.append(line)
            percent = parseProgress(line)
            if percent is not None:
                if percent != run.progress and run.onProgress:
                    run.progress = percent
                    run.onProgress(percent)
                return
            logging.debug("cad: %s", line)
            if run.onLog:
                run.onLog(line)
        finally:
            self._inCallback.active = False

    def _onFinishedAsync(self, run: _Run, code: ExitCode) -> None:
        try:
            node = self._finish(run, code)
        except Exception as exc:
            logging.error("CADSegment: %s", exc)
            self._notify(run, None, CANCELLED if isinstance(exc, SegmentationCancelled) else str(exc))
            return
        self._notify(run, node, None)

    def _finish(self, run: _Run, code: ExitCode | None):
        """Import the result (exit code 0) or raise; the workspace is removed and the logic freed in every case."""
        try:
            with self._lock:
                if run.state == "cancelled" or code == CANCELLED:
                    run.state = "cancelled"
                    raise SegmentationCancelled("segmentation cancelled")
                run.state = "importing"
            if code != 0:
                raise RuntimeError(f"segmentation failed: {engineErrorLine(list(run.lines), code)}")
            sidecarPath = Path(f"{run.outputPath}.json")
            try:
                sidecar = json.loads(sidecarPath.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise RuntimeError(f"segmentation failed: cannot read the engine's sidecar {sidecarPath} ({exc})") \
                    from exc
            modelId = str(sidecar.get("model") or Path(run.model).name)
            return importLabelmapToSegmentation(run.outputPath, sidecar.get("labels", []), run.volumeNode,
                                                run.segmentationNode,
                                                name=f"{run.volumeNode.GetName()} {modelId} segmentation")
        finally:
            self._end(run)

    def _end(self, run: _Run) -> None:
        run.workspace.cleanup()
        with self._lock:
            if run.state != "cancelled":
                run.state = "done"
            if self._current is run:
                self._current = None

    @staticmethod
    def _notify(run: _Run, node, error: str | None) -> None:
        if run.onFinished is None:
            return
        try:
            run.onFinished(node, error)
        except Exception:
            logging.exception("CADSegment: error in onFinished")
