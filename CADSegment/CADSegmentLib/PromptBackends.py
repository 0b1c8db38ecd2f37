"""Where a prompt is computed, behind one small interface, so :class:`~CADSegmentLib.PromptLogic.PromptLogic` writes
the result the same way whoever computed it.

* :class:`PromptBackend` (a ``typing.Protocol``): ``interact(volumeNode, request, previousPath, scribblePath,
  workspace) -> PromptAnswer``. The request's points and box are already in the volume's *local* RAS (the frame of the
  exported file); the answer's mask lies on the volume's grid. A backend may also have ``prepareVolume(volumeNode)``,
  called first on the calling (main) thread, so that everything reading MRML happens there and ``interact`` may run
  on a worker thread; and ``cancel()``.
* :class:`CommandBackend`: the cold path, ``python -m cadcore interact ...`` through an injectable
  :class:`~CADExtensionLib.process.ProcessRunner` (the engine's start-up is paid per prompt). It reuses the
  run/wait/cancel plumbing of :class:`~CADExtensionLib.engine_job.EngineJobLogic`, so a failure raises RuntimeError
  carrying the engine's one line, and it exports each volume node once and reuses that file while the node's voxels
  and geometry are unchanged (writing a whole-head volume costs more than a warm prompt).
* A ``ServerBackend`` (a warm ``cad serve``) can be added here without touching ``PromptLogic``.

Imports ``slicer``/``vtk`` (through CADExtensionLib) and the standard library only.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from CADExtensionLib.command import engineEnvironment, interactArgv
from CADExtensionLib.engine_job import EngineJobLogic, EngineRun
from CADExtensionLib.process import ProcessRunner, TemporaryWorkspace, pythonExecutable
from CADExtensionLib.volumes import exportVolumeToFile, ijkToRASArray


class PromptCancelled(RuntimeError):
    """Raised by a blocking prompt that ``cancel()`` stopped."""


@dataclass(frozen=True)
class PromptRequest:
    """One prompt as the engine takes it: points and box in the volume's local RAS millimetres (the exported file's
    frame, i.e. without the node's parent transform), the model's label value, and whether to return the uncertainty
    map. Scribbles and the previous segment travel as files (``interact``'s other arguments)."""

    model: str
    label: int
    positive: tuple[tuple[float, float, float], ...] = ()
    negative: tuple[tuple[float, float, float], ...] = ()
    box: tuple[float, float, float, float, float, float] | None = None
    uncertainty: bool = False


@dataclass
class PromptAnswer:
    """The engine's answer: a 0/1 mask file on the volume's grid, its report (``cad interact``'s sidecar dict:
    ``suggested_click``, ``timings``, ``voxels`` ...) and the uncertainty map file when one was asked for."""

    maskPath: Path
    report: dict[str, Any] = field(default_factory=dict)
    uncertaintyPath: Path | None = None


@runtime_checkable
class PromptBackend(Protocol):
    """What :class:`~CADSegmentLib.PromptLogic.PromptLogic` needs from whatever computes a prompt."""

    def interact(self, volumeNode, request: PromptRequest, previousPath: Path | None, scribblePath: Path | None,
                 workspace: Path) -> PromptAnswer:
        """Segment ``request`` on ``volumeNode``; outputs go into ``workspace`` (the caller removes it). Raises
        RuntimeError with the engine's one-line error, or :class:`PromptCancelled`."""


class VolumeFileCache:
    """One exported file per volume node, reused while the node's voxels and geometry are unchanged.

    The key is the node's ID, the vtk MTime of its image data (bumped by every voxel edit, ``Modified()`` and a new
    image) and its IJKToRAS matrix (compared by value: a changed origin or direction means another file). The files
    live in a private temporary folder removed by :meth:`clear`; only the ``maxVolumes`` most recently used volumes
    keep their file (a volume can be gigabytes).
    """

    def __init__(self, temporaryFolder: str | os.PathLike[str] | None = None, maxVolumes: int = 2) -> None:
        self.temporaryFolder = temporaryFolder
        self.maxVolumes = max(1, int(maxVolumes))
        self._workspace: TemporaryWorkspace | None = None
        self._files: dict[str, tuple[tuple, Path]] = {}
        self._lock = threading.Lock()
        self.exports = 0  # how many files were written (tests and latency reports read it)

    @staticmethod
    def key(volumeNode) -> tuple:
        imageData = volumeNode.GetImageData()
        matrix = ijkToRASArray(volumeNode)
        return (volumeNode.GetID(), imageData.GetMTime() if imageData is not None else None,
                tuple(value for row in matrix for value in row))

    def path(self, volumeNode) -> Path:
        """The file holding ``volumeNode`` now, written only when the node changed since the last call."""
        key = self.key(volumeNode)
        with self._lock:
            known = self._files.get(volumeNode.GetID())
            if known is not None and known[0] == key and known[1].is_file():
                self._files[volumeNode.GetID()] = self._files.pop(volumeNode.GetID())  # most recently used last
                return known[1]
            if self._workspace is None or self._workspace.removed:
                self._workspace = TemporaryWorkspace(prefix="CADSegment-volumes-", parent=self.temporaryFolder)
            if known is not None:
                known[1].unlink(missing_ok=True)
                del self._files[volumeNode.GetID()]
            target = self._workspace.path / f"volume{self.exports}.nrrd"
            try:
                exportVolumeToFile(volumeNode, target)
            except BaseException:
                target.unlink(missing_ok=True)
                raise
            self.exports += 1
            self._files[volumeNode.GetID()] = (key, target)
            while len(self._files) > self.maxVolumes:
                oldest = next(iter(self._files))
                self._files.pop(oldest)[1].unlink(missing_ok=True)
            return target

    @property
    def folder(self) -> Path | None:
        return None if self._workspace is None or self._workspace.removed else self._workspace.path

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            if self._workspace is not None:
                self._workspace.cleanup()
                self._workspace = None


@dataclass
class _InteractRun(EngineRun):
    outputPath: Path
    uncertaintyPath: Path | None


class CommandBackend(EngineJobLogic[_InteractRun]):
    """``python -m cadcore interact ...`` per prompt, through ``runner`` (default: a subprocess; tests inject
    :class:`~CADSegmentLib.InProcessRunner`). ``modelsFolder`` is passed to the engine as ``CAD_MODELS`` so it finds
    the models the panel lists; ``device`` is ``cad interact --device``."""

    logPrefix = "CADSegment"
    taskName = "prompt"
    workspacePrefix = "CADSegment-prompt-run-"
    cancelledError = PromptCancelled

    def __init__(self, runner: ProcessRunner | None = None, engineFolder: str | os.PathLike[str] | None = None,
                 python: str | None = None, temporaryFolder: str | os.PathLike[str] | None = None,
                 device: str = "auto", modelsFolder: str | os.PathLike[str] | None = None) -> None:
        super().__init__(runner, engineFolder, python, temporaryFolder)
        self.device = device
        self.modelsFolder = modelsFolder
        self.volumes = VolumeFileCache(temporaryFolder)

    def prepareVolume(self, volumeNode) -> Path:
        """Export (or reuse) the volume's file; on the calling thread, as it reads MRML."""
        return self.volumes.path(volumeNode)

    def interact(self, volumeNode, request: PromptRequest, previousPath: Path | None, scribblePath: Path | None,
                 workspace: Path) -> PromptAnswer:
        inputPath = self.prepareVolume(volumeNode)
        workspace = Path(workspace)

        def makeRun(runWorkspace: TemporaryWorkspace) -> _InteractRun:
            return _InteractRun(workspace / "mask.nrrd",
                                workspace / "uncertainty.nrrd" if request.uncertainty else None,
                                workspace=runWorkspace)

        def prepare(run: _InteractRun):
            argv = interactArgv(self.python or pythonExecutable(), inputPath, run.outputPath, request.model,
                                request.label, request.positive, request.negative, request.box, scribblePath,
                                previousPath, run.uncertaintyPath, self.device)
            env = engineEnvironment(self.engineFolder, os.environ.get("PYTHONPATH"))
            if self.modelsFolder:
                env["CAD_MODELS"] = str(self.modelsFolder)
            return argv, env

        return self._runJob(makeRun, prepare, wait=True)

    def _importResult(self, run: _InteractRun) -> PromptAnswer:
        sidecarPath = Path(f"{run.outputPath}.json")
        try:
            report = json.loads(sidecarPath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"prompt failed: cannot read the engine's sidecar {sidecarPath} ({exc})") from exc
        if not run.outputPath.is_file():
            raise RuntimeError(f"prompt failed: the engine wrote no mask {run.outputPath}")
        return PromptAnswer(run.outputPath, report, run.uncertaintyPath)

    def close(self) -> None:
        """Remove the cached volume files (the next prompt exports again)."""
        self.volumes.clear()
