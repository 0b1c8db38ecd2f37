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

import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from CADExtensionLib.command import engineEnvironment, trainArgv
from CADExtensionLib.engine_job import EngineJobLogic, EngineRun
from CADExtensionLib.models import ModelError, ModelManagerLogic, ModelSummary, isSafeModelId, readCard
from CADExtensionLib.process import ProcessRunner, TemporaryWorkspace, parseProgress, pythonExecutable

from CADSegmentLib.TrainingData import (
    checkPairs,
    exportPairs,
    folderDataset,
    modelLabels,
    validationCount,
    writeDataset,
)

STAGES = {"loading training cases": (0, 5), "loading validation cases": (5, 10), "training": (10, 100),
          "coarse stage, loading training cases": (0, 2), "coarse stage, loading validation cases": (2, 5),
          "coarse stage, training": (5, 45), "fine stage, loading training cases": (45, 47),
          "fine stage, loading validation cases": (47, 50), "fine stage, training": (50, 100)}
"""``cad train``'s progress bars (tqdm descriptions) and the share of the panel's bar each one fills; a cascade
(``--cascade``) trains its coarse, then its fine stage, each bar named after its stage."""
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
    """"epoch 4/10: loss 0.512, validation Dice 0.701 (best 0.701)" from the training bar (for a cascade
    "coarse stage, epoch 4/10: ..."), else None."""
    name = line.split(":", 1)[0].strip()
    if ":" not in line or name not in STAGES or not name.endswith("training"):
        return None
    epoch = _EPOCH.search(line)
    if epoch is None or epoch.group(1) == "0":
        return None
    values = {key: value for key, value in _POSTFIX.findall(line) if value != "nan"}
    text = f"{name[:-len('training')]}epoch {epoch.group(1)}/{epoch.group(2)}"
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
    """The registered model: its id and folder, the curves PNG (None if the engine wrote none), its registry summary
    and the best validation Dice the engine reports (working space, None if unknown)."""

    modelId: str
    folder: Path
    curvesPath: Path | None
    parentId: str
    entry: ModelSummary
    validationDice: float | None = None


@dataclass
class _Run(EngineRun):
    """One fine-tuning: the registry to import into, where the engine writes the package, and its ids."""

    models: ModelManagerLogic
    outputPath: Path
    modelId: str
    parentId: str
    overwrite: bool
    status: str = ""  # the last epoch status line sent to onLog


class ImproveModelLogic(EngineJobLogic[_Run]):
    """Fine-tune a model on scene pairs or a folder; see the module docstring.

    ``isRunning``, ``processEvents`` and ``cancel(timeout=10.0)`` come from :class:`EngineJobLogic`.
    """

    logPrefix = "CADSegment"
    taskName = "fine-tuning"
    busyMessage = "a fine-tuning run is already going on; cancel it or wait for it first"
    workspacePrefix = "CADSegment-train-"
    importingState = "registering"
    cancelledError = ImproveModelCancelled

    def __init__(self, runner: ProcessRunner | None = None, engineFolder: str | os.PathLike[str] | None = None,
                 python: str | None = None, temporaryFolder: str | os.PathLike[str] | None = None,
                 modelsFolder: str | os.PathLike[str] | None = None,
                 shippedFolder: str | os.PathLike[str] | None = None) -> None:
        super().__init__(runner, engineFolder, python, temporaryFolder)
        self.modelsFolder = modelsFolder
        self.shippedFolder = shippedFolder

    @property
    def models(self) -> ModelManagerLogic:
        """The model registry, made afresh on each use: with ``modelsFolder`` None it follows ``$CAD_MODELS``, which
        the CAD Extension settings update while Slicer runs."""
        return ModelManagerLogic(modelsFolder=self.modelsFolder, shippedFolder=self.shippedFolder)

    def suggestModelId(self, parentId: str) -> str:
        return suggestModelId(parentId, (entry.id for entry in self.models.listModels()))

    def checkNewModelId(self, modelId: str, overwrite: bool = False) -> None:
        """Refuse an unsafe id, a shipped model's id, and an installed one unless ``overwrite``: before training,
        not after an hour of it."""
        if not isSafeModelId(modelId):
            raise ValueError(f"{modelId!r} cannot name a model: use letters, digits, '.', '_' and '-' only")
        existing = next((entry for entry in self.models.listModels() if entry.id == modelId), None)
        if existing is not None and existing.shipped:
            raise ValueError(f"{modelId!r} is a model shipped with the extension; choose another name")
        if existing is not None and not overwrite:
            raise ValueError(f"a model named {modelId!r} already exists ({existing.path}); choose another name "
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
        if entry.task != "segmentation" or entry.bundle:
            raise ValueError(f"{entry.id!r} is not a segmentation model package; only those can be fine-tuned")
        card = readCard(Path(entry.path))
        labels = modelLabels(card)
        newModelId = newModelId or self.suggestModelId(entry.id)
        self.checkNewModelId(newModelId, overwrite)
        values = checkPairs(pairs, labels, entry.id) if pairs is not None else None
        split = folderDataset(folder, labels, entry.id) if folder is not None else None

        def makeRun(workspace: TemporaryWorkspace) -> _Run:
            return _Run(models, workspace.path / newModelId, newModelId, entry.id, overwrite, workspace=workspace,
                        onProgress=onProgress, onLog=onLog, onFinished=onFinished)

        def prepare(run: _Run) -> tuple[list[str], dict[str, str]]:
            data = run.workspace.path / "data"
            train, validation = split if split is not None else ([], [])
            if values is not None:
                cases = exportPairs(pairs, values, data)
                count = validationCount(len(cases))
                train, validation = cases[:-count], cases[-count:]
            datasetPath, labelsPath = writeDataset(data, train, validation, labels,
                                                   name=f"{entry.id} corrections", modality=card.get("modality"))
            argv = trainArgv(self.python or pythonExecutable(), datasetPath, run.outputPath, entry.path,
                             newModelId, epochs=epochs, device=device, labelsPath=labelsPath,
                             freezeEncoderEpochs=freezeEncoderEpochs, valEvery=validationInterval(epochs),
                             **parentSettings(card),
                             description=f"{entry.id} fine-tuned on {len(train) + len(validation)} cases "
                                         "in 3D Slicer")
            return argv, {**engineEnvironment(self.engineFolder, os.environ.get("PYTHONPATH")),
                          **models.engineEnvironment()}

        return self._runJob(makeRun, prepare, wait)

    def _onProgressLine(self, run: _Run, line: str, percent: int) -> None:
        """``cad train``'s bars fill stages of one panel bar that never goes back, plus one status line per epoch
        in the log (the bar redraws themselves are never logged)."""
        percent = trainingProgress(line)
        if percent is not None and percent > run.progress:
            run.progress = percent
            if run.onProgress:
                run.onProgress(percent)
        status = trainingStatus(line)
        if status and status.split(":")[0] != run.status.split(":")[0] and run.onLog:
            run.onLog(status)
        run.status = status or run.status

    def _importResult(self, run: _Run) -> ImproveModelResult:
        """Register the engine's package in the user models folder; only now does the new model appear."""
        if not (run.outputPath / "model.json").is_file():
            raise RuntimeError(f"fine-tuning failed: the engine wrote no model package in {run.outputPath}")
        # Checkpoints (optimizer state, several times the weights) only serve --resume, which this panel
        # does not offer, and a cascade's staging folder holds crops of the user's cases and per-stage copies;
        # the card, weights, curves, log and summary are what the user keeps.
        for staging in ("training", "cascade"):
            shutil.rmtree(run.outputPath / staging, ignore_errors=True)
        try:
            entry = run.models.importModel(run.outputPath, overwrite=run.overwrite)
        except ModelError as exc:
            raise RuntimeError(f"the new model could not be registered: {exc}") from exc
        folder = Path(entry.path)
        curves = folder / "training_curves.png"
        try:
            dice = readCard(folder).get("metrics", {}).get("validation_dice_working_space")
        except ModelError:
            dice = None
        return ImproveModelResult(entry.id, folder, curves if curves.is_file() else None, run.parentId,
                                  entry, float(dice) if isinstance(dice, (int, float)) else None)


def parentSettings(card: dict[str, Any]) -> dict[str, Any]:
    """What the fine-tuning must keep from the parent card: working spacing, patch size and normalisation
    (``cad train`` would otherwise pick the data's median spacing, its default window and MR normalisation), and
    for a cascade its ROI margin (the engine takes the coarse stage's spacing and patch from the parent itself)."""
    preprocessing = card.get("preprocessing") or {}
    kind = str((preprocessing.get("normalization") or {}).get("kind", "")).lower()
    modality = {"ct": "CT", "mr": "MR"}.get(kind) or (str(card.get("modality") or "").upper() or None)
    settings = {"spacing": preprocessing.get("spacing") or None,
                "patchSize": (card.get("inference") or {}).get("patch_size") or None,
                "modality": modality if modality in ("CT", "MR") else None}
    if "cascade" in card:
        settings["cascadeMarginMm"] = float((card["cascade"] or {}).get("margin_mm", 10.0))
    return settings
