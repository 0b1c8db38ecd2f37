"""Improve model: fine-tune a segmentation model on the user's own corrected cases and register the result.

Usable without the GUI, like every Logic::

    logic = ImproveModelLogic()
    result = logic.run("hippocampus-unet", pairs=[(volume1, segmentation1), (volume2, segmentation2)], epochs=50)
    result.modelId, result.folder, result.curvesPath  # the new model is in the model list now

The data (``TrainingData``: scene pairs exported on each volume's grid with label values by segment name, or a
folder) becomes a ``dataset.json`` in a private temporary workspace; ``cad train --init MODEL`` runs there in a
background process (``CADExtensionLib.process``), with the parent's resolution, window, normalisation and labels
(``trainArgv``). Only when it succeeds is the package imported into the user models folder through the model
manager (weights checked against the card's sha256; an existing id is replaced only with ``overwrite=True``, a
shipped one never), so a failed or cancelled run leaves no half-written model behind. The workspace is removed in
every outcome. Non-blocking use and cancel work as in :class:`CADSegmentLib.SegmentationLogic`.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from CADExtensionLib.command import engineEnvironment, trainArgv
from CADExtensionLib.command import engineFolder as defaultEngineFolder
from CADExtensionLib.models import ModelError, ModelManagerLogic, isSafeModelId, readCard
from CADExtensionLib.process import (
    CANCELLED,
    ExitCode,
    ProcessRunner,
    TemporaryWorkspace,
    parseProgress,
    pythonExecutable,
)

from CADSegmentLib.SegmentationLogic import defaultRunner, engineErrorLine
from CADSegmentLib.TrainingData import (
    checkPairs,
    exportPairs,
    folderDataset,
    modelLabels,
    validationCount,
    writeDataset,
)

STAGES = {"loading training cases": (0, 5), "loading validation cases": (5, 10), "training": (10, 100)}
"""``cad train``'s progress bars (tqdm descriptions) and the share of the panel's bar each one fills."""
_EPOCH = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")
_POSTFIX = re.compile(r"\b(loss|val_dice|best)=([-+0-9.eE]+|nan)")


class ImproveModelCancelled(RuntimeError):
    """Raised by a blocking ``run`` that ``cancel()`` stopped."""


def trainingProgress(line: str) -> int | None:
    """The panel's percentage for a ``cad train`` progress line (None for other lines and unknown bars)."""
    percent = parseProgress(line)
    stage = STAGES.get(line.split(":", 1)[0].strip()) if percent is not None else None
    if stage is None:
        return None
    low, high = stage
    return low + round((high - low) * percent / 100)


def trainingStatus(line: str) -> str | None:
    """"epoch 4/10: loss 0.512, validation Dice 0.701 (best 0.701)" from the training bar, else None."""
    if not line.strip().startswith("training:"):
        return None
    epoch = _EPOCH.search(line)
    if epoch is None or epoch.group(1) == "0":
        return None
    values = {key: value for key, value in _POSTFIX.findall(line) if value != "nan"}
    text = f"epoch {epoch.group(1)}/{epoch.group(2)}"
    details = [f"loss {values['loss']}"] if "loss" in values else []
    if "val_dice" in values:
        details.append(f"validation Dice {values['val_dice']}" + (f" (best {values['best']})" if "best" in values
                                                                   else ""))
    return f"{text}: {', '.join(details)}" if details else text


def suggestModelId(parentId: str, taken: Iterable[str]) -> str:
    """``<parent>-finetuned``, numbered (``-2``, ``-3`` ...) past the ids in ``taken``: never an existing model."""
    base = f"{parentId}-finetuned"[:120]
    taken = set(taken)
    number, candidate = 2, base
    while candidate in taken:
        candidate, number = f"{base}-{number}", number + 1
    return candidate


def validationInterval(epochs: int) -> int:
    """Validate about 20 times per run (every epoch for short runs) so the curves have points to show."""
    return max(1, epochs // 20)


@dataclass
class ImproveModelResult:
    """The registered model: its id and folder, the curves PNG (None if the engine wrote none), the listing entry
    and the best validation Dice the engine reports (working space, None if unknown)."""

    modelId: str
    folder: Path
    curvesPath: Path | None
    parentId: str
    entry: dict[str, Any]
    validationDice: float | None = None


@dataclass
class _Run:
    workspace: TemporaryWorkspace
    models: ModelManagerLogic
    outputPath: Path
    modelId: str
    parentId: str
    overwrite: bool
    onProgress: Callable[[int], None] | None
    onLog: Callable[[str], None] | None
    onFinished: Callable[[ImproveModelResult | None, str | None], None] | None
    state: str = "running"  # running → registering → done, or running → cancelled
    lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    progress: int = -1
    status: str = ""


class ImproveModelLogic:
    """Fine-tune a model on scene pairs or a folder; see the module docstring."""

    def __init__(self, runner: ProcessRunner | None = None, engineFolder: str | os.PathLike[str] | None = None,
                 python: str | None = None, temporaryFolder: str | os.PathLike[str] | None = None,
                 modelsFolder: str | os.PathLike[str] | None = None,
                 shippedFolder: str | os.PathLike[str] | None = None) -> None:
        self.runner: ProcessRunner = runner if runner is not None else defaultRunner()
        self.engineFolder = Path(engineFolder) if engineFolder else defaultEngineFolder()
        self.python = python
        self.temporaryFolder = temporaryFolder
        self.modelsFolder = modelsFolder
        self.shippedFolder = shippedFolder
        self._lock = threading.Lock()
        self._current: _Run | None = None
        self._inCallback = threading.local()

    @property
    def models(self) -> ModelManagerLogic:
        """The model registry, made afresh on each use: with ``modelsFolder`` None it follows ``$CAD_MODELS``, which
        the CAD Extension settings update while Slicer runs."""
        return ModelManagerLogic(modelsFolder=self.modelsFolder, shippedFolder=self.shippedFolder)

    def isRunning(self) -> bool:
        return self._current is not None

    def processEvents(self) -> int:
        """Deliver the runner's queued callbacks on this thread (the widget's QTimer does it inside Slicer)."""
        dispatch = getattr(self.runner, "dispatchPendingCallbacks", None)
        return dispatch() if dispatch is not None else 0

    def suggestModelId(self, parentId: str) -> str:
        return suggestModelId(parentId, (entry["id"] for entry in self.models.listModels()))

    def checkNewModelId(self, modelId: str, overwrite: bool = False) -> None:
        """Refuse an unsafe id, a shipped model's id, and an installed one unless ``overwrite``: before training,
        not after an hour of it."""
        if not isSafeModelId(modelId):
            raise ValueError(f"{modelId!r} cannot name a model: use letters, digits, '.', '_' and '-' only")
        existing = next((entry for entry in self.models.listModels() if entry["id"] == modelId), None)
        if existing is not None and existing["shipped"]:
            raise ValueError(f"{modelId!r} is a model shipped with the extension; choose another name")
        if existing is not None and not overwrite:
            raise ValueError(f"a model named {modelId!r} already exists ({existing['path']}); choose another name "
                             "or allow replacing it")

    def run(self, model: str, pairs: Sequence[tuple[Any, Any]] | None = None,
            folder: str | os.PathLike[str] | None = None, newModelId: str | None = None, epochs: int = 50,
            device: str = "auto", overwrite: bool = False, freezeEncoderEpochs: int = 0, wait: bool = True,
            onProgress: Callable[[int], None] | None = None, onLog: Callable[[str], None] | None = None,
            onFinished: Callable[[ImproveModelResult | None, str | None], None] | None = None,
            ) -> ImproveModelResult | None:
        """Fine-tune ``model`` on ``pairs`` (volume node, segmentation node) or on ``folder``; register the result.

        Returns the :class:`ImproveModelResult` (``wait=True``) or None at once (``wait=False``).
        ``onProgress(percent)``, ``onLog(line)`` (engine lines and one status line per epoch) and
        ``onFinished(result, error)`` (error None, ``"cancelled"``, or the message) behave as in
        :meth:`SegmentationLogic.run`. Bad input (unknown model, fewer than two pairs, a segment whose name is no
        label of the model, an existing id without ``overwrite`` ...) raises ValueError before anything is written.
        """
        if (pairs is None) == (folder is None):
            raise ValueError("give either (volume, segmentation) pairs or a data folder")
        trainArgv("python", "data", "output", "model", "id", epochs=epochs, device=device,
                  freezeEncoderEpochs=freezeEncoderEpochs)  # bad numbers or device fail here, before any export
        models = self.models
        try:
            entry = models.model(model)
        except ModelError as exc:
            raise ValueError(str(exc)) from exc
        if entry["task"] != "segmentation" or entry["bundle"]:
            raise ValueError(f"{entry['id']!r} is not a segmentation model package; only those can be fine-tuned")
        card = readCard(Path(entry["path"]))
        if "cascade" in card:  # its weights are stored per stage ("coarse.", "fine."): --init would load none
            raise ValueError(f"{entry['id']!r} is a coarse-to-fine cascade; fine-tuning cascades is not supported "
                             "yet (cad train --init starts from a single network)")
        labels = modelLabels(card)
        newModelId = newModelId or self.suggestModelId(entry["id"])
        self.checkNewModelId(newModelId, overwrite)
        values = checkPairs(pairs, labels, entry["id"]) if pairs is not None else None
        split = folderDataset(folder, labels, entry["id"]) if folder is not None else None
        with self._lock:
            if self._current is not None:
                raise RuntimeError("a fine-tuning run is already going on; cancel it or wait for it first")
            workspace = TemporaryWorkspace(prefix="CADSegment-train-", parent=self.temporaryFolder)
            run = _Run(workspace, models, workspace.path / newModelId, newModelId, entry["id"], overwrite,
                       onProgress, onLog, onFinished)
            self._current = run
        try:
            if values is not None:
                cases = exportPairs(pairs, values, workspace.path / "data")
                count = validationCount(len(cases))
                split = (cases[:-count], cases[-count:])
            datasetPath, labelsPath = writeDataset(workspace.path / "data", *split, labels,
                                                   name=f"{entry['id']} corrections", modality=card.get("modality"))
            argv = trainArgv(self.python or pythonExecutable(), datasetPath, run.outputPath, entry["path"],
                             newModelId, epochs=epochs, device=device, labelsPath=labelsPath,
                             freezeEncoderEpochs=freezeEncoderEpochs, valEvery=validationInterval(epochs),
                             **parentSettings(card),
                             description=f"{entry['id']} fine-tuned on {len(split[0]) + len(split[1])} cases "
                                         "in 3D Slicer")
            env = {**engineEnvironment(self.engineFolder, os.environ.get("PYTHONPATH")),
                   **models.engineEnvironment()}
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
            result = self._finish(run, code)
        except Exception as exc:
            self._notify(run, None, CANCELLED if isinstance(exc, ImproveModelCancelled) else str(exc))
            raise
        self._notify(run, result, None)
        return result

    def cancel(self, timeout: float = 10.0) -> bool:
        """Stop the run: kill the engine's process tree, remove the workspace; nothing is registered. False if
        there is no run or it is already registering its result."""
        with self._lock:
            run = self._current
            if run is None or run.state != "running":
                return False
            run.state = "cancelled"
        self.runner.cancel()
        if not getattr(self._inCallback, "active", False):  # waiting inside a runner callback would deadlock
            self.runner.wait(timeout)
        self._end(run)
        return True

    def _onLine(self, run: _Run, line: str) -> None:
        self._inCallback.active = True
        try:
            run.lines.append(line)
            if parseProgress(line) is not None:  # a progress bar redraw: the bar and a status line, never the log
                percent = trainingProgress(line)
                if percent is not None and percent > run.progress:
                    run.progress = percent
                    if run.onProgress:
                        run.onProgress(percent)
                status = trainingStatus(line)
                if status and status.split(":")[0] != run.status.split(":")[0] and run.onLog:
                    run.onLog(status)
                run.status = status or run.status
                return
            logging.debug("cad: %s", line)
            if run.onLog:
                run.onLog(line)
        finally:
            self._inCallback.active = False

    def _onFinishedAsync(self, run: _Run, code: ExitCode) -> None:
        try:
            result = self._finish(run, code)
        except Exception as exc:
            logging.error("CADSegment: %s", exc)
            self._notify(run, None, CANCELLED if isinstance(exc, ImproveModelCancelled) else str(exc))
            return
        self._notify(run, result, None)

    def _finish(self, run: _Run, code: ExitCode | None) -> ImproveModelResult:
        """Register the package (exit code 0) or raise; the workspace is removed and the logic freed in every case."""
        try:
            with self._lock:
                if run.state == "cancelled" or code == CANCELLED:
                    run.state = "cancelled"
                    raise ImproveModelCancelled("fine-tuning cancelled")
                run.state = "registering"
            if code != 0:
                raise RuntimeError(f"fine-tuning failed: {engineErrorLine(list(run.lines), code)}")
            if not (run.outputPath / "model.json").is_file():
                raise RuntimeError(f"fine-tuning failed: the engine wrote no model package in {run.outputPath}")
            # Checkpoints (optimizer state, several times the weights) only serve --resume, which this panel
            # does not offer; the card, weights, curves, log and summary are what the user keeps.
            shutil.rmtree(run.outputPath / "training", ignore_errors=True)
            try:
                entry = run.models.importModel(run.outputPath, overwrite=run.overwrite)
            except ModelError as exc:
                raise RuntimeError(f"the new model could not be registered: {exc}") from exc
            folder = Path(entry["path"])
            curves = folder / "training_curves.png"
            try:
                dice = readCard(folder).get("metrics", {}).get("validation_dice_working_space")
            except ModelError:
                dice = None
            return ImproveModelResult(entry["id"], folder, curves if curves.is_file() else None, run.parentId,
                                      entry, float(dice) if isinstance(dice, (int, float)) else None)
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
    def _notify(run: _Run, result: ImproveModelResult | None, error: str | None) -> None:
        if run.onFinished is None:
            return
        try:
            run.onFinished(result, error)
        except Exception:
            logging.exception("CADSegment: error in onFinished")


def parentSettings(card: dict[str, Any]) -> dict[str, Any]:
    """What the fine-tuning must keep from the parent card: working spacing, patch size and normalisation
    (``cad train`` would otherwise pick the data's median spacing, its default window and MR normalisation)."""
    preprocessing = card.get("preprocessing") or {}
    kind = str((preprocessing.get("normalization") or {}).get("kind", "")).lower()
    modality = {"ct": "CT", "mr": "MR"}.get(kind) or (str(card.get("modality") or "").upper() or None)
    return {"spacing": preprocessing.get("spacing") or None,
            "patchSize": (card.get("inference") or {}).get("patch_size") or None,
            "modality": modality if modality in ("CT", "MR") else None}
