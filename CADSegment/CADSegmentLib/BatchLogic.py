"""CADSegment's batch logic: a whole folder (or the volumes in the scene) through ``cad batch`` in one background
process, with progress, a per-case report, cancel, and optionally each result loaded as a segmentation node.

Why one ``cad batch`` process rather than a loop of ``cad segment`` runs: the engine loads torch and the model once
for the whole cohort (docs/batch.md). Usable without the GUI::

    result = BatchLogic().run(inputFolder="/data/cohort", outputFolder="/data/out", model="hippocampus-unet")
    print(result.okCount, result.failedCount, result.summaryPath)

The engine's output (the contract in docs/batch.md): on stdout one line per finished case, ``case <id>: ok (<s> s)``
or ``case <id>: failed: <one-line error>``, then ``batch: <n> ok, <m> failed, summary <path>``; on stderr the
progress bar (``batch:  45%| ...``). Exit 0 when every case succeeded, 1 when some failed (a finished run, not an
error: the failed cases are in the result), 2 for bad arguments (nothing written). Scene volumes are exported to the
run's temporary folder first, one ``<id>.nrrd`` each, and that folder is removed in every outcome; the outputs stay
in the user's output folder (a cancelled run leaves the cases already done there, which ``resume`` then skips).
No Qt here; the panel is ``CADSegmentWidgets.BatchSection``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from CADExtensionLib.command import BATCH_FORMATS, batchArgv, engineEnvironment
from CADExtensionLib.engine_job import EngineJobLogic, EngineRun
from CADExtensionLib.process import ExitCode, TemporaryWorkspace, pythonExecutable
from CADExtensionLib.segmentations import importLabelmapToSegmentation, removeNodeAndDependents
from CADExtensionLib.volumes import exportVolumeToFile

_CASE_OK = re.compile(r"^case (?P<id>.+): ok \((?P<seconds>[0-9.eE+-]+) s\)$")
_CASE_FAILED = re.compile(r"^case (?P<id>.+?): failed: (?P<error>.*)$")
_SUMMARY = re.compile(r"^batch: (?P<ok>\d+) ok, (?P<failed>\d+) failed, summary (?P<path>.+)$")
SOME_FAILED = 1
"""``cad batch``'s exit code when the run finished but some cases failed."""
LOADABLE_FORMATS = ("nii.gz", "nrrd", "seg.nrrd")
"""Outputs read back as labelmaps; DICOM SEG (``dcm``) goes through Slicer's DICOM module instead."""


def availableFormats(sceneInput: bool) -> tuple[str, ...]:
    """The output formats the panel offers: DICOM SEG (``dcm``) references its source DICOM series, so it is not
    offered for scene volumes (they reach the engine as exported NRRD files)."""
    return tuple(name for name in BATCH_FORMATS if not (sceneInput and name == "dcm"))


@dataclass(frozen=True)
class BatchCase:
    """One finished case as the engine reported it: ``status`` is ``"ok"`` or ``"failed"``."""

    id: str
    status: str
    seconds: float | None = None
    error: str = ""


def parseCaseLine(line: str) -> BatchCase | None:
    """A ``case <id>: ok (<seconds> s)`` or ``case <id>: failed: <error>`` line, else None."""
    text = line.strip()
    match = _CASE_OK.match(text)
    if match:
        try:
            return BatchCase(match["id"], "ok", float(match["seconds"]))
        except ValueError:
            return None
    match = _CASE_FAILED.match(text)
    return BatchCase(match["id"], "failed", error=match["error"]) if match else None


def parseSummaryLine(line: str) -> tuple[int, int, Path] | None:
    """``batch: <n_ok> ok, <n_failed> failed, summary <path>`` as (n_ok, n_failed, path), else None."""
    match = _SUMMARY.match(line.strip())
    return (int(match["ok"]), int(match["failed"]), Path(match["path"])) if match else None


def caseIdForName(name: str, taken: Sequence[str] = ()) -> str:
    """A file-name-safe, unique case id for a scene volume: letters, digits, ``_`` and ``-`` only (no dots, so the
    engine's "file name without its suffix" gives the id back unchanged), ``_2``, ``_3`` ... when taken."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "volume"
    candidate, number = base, 2
    while candidate in taken:
        candidate, number = f"{base}_{number}", number + 1
    return candidate


@dataclass
class BatchResult:
    """The end of a run: the engine's counts and summary, every case it reported, and the nodes loaded (if asked)."""

    outputFolder: Path
    outputFormat: str
    summaryPath: Path | None
    okCount: int
    failedCount: int
    cases: list[BatchCase] = field(default_factory=list)
    segmentationNodes: list[Any] = field(default_factory=list)

    @property
    def failedCases(self) -> list[BatchCase]:
        return [case for case in self.cases if case.status == "failed"]


class BatchCancelled(RuntimeError):
    """Raised by a blocking ``run`` that ``cancel()`` stopped."""


@dataclass
class _Run(EngineRun):
    outputFolder: Path
    outputFormat: str
    model: str
    volumes: dict[str, Any]  # case id -> scene volume node (scene input), empty for a folder
    loadResults: bool
    onCase: Callable[[BatchCase], None] | None = None
    cases: list[BatchCase] = field(default_factory=list)
    summary: tuple[int, int, Path] | None = None


class BatchLogic(EngineJobLogic[_Run]):
    """Runs ``cad batch``; see the module docstring. ``isRunning``, ``processEvents`` and ``cancel`` come from
    :class:`EngineJobLogic` (cancel kills the engine's process tree; the exported scene volumes are removed)."""

    logPrefix = "CADSegment"
    taskName = "batch segmentation"
    cancelledError = BatchCancelled
    workspacePrefix = "CADSegment-batch-"

    def run(self, outputFolder: str | os.PathLike[str], model: str = "hippocampus-unet",
            inputFolder: str | os.PathLike[str] | None = None, volumeNodes: Sequence[Any] | None = None,
            outputFormat: str = "nii.gz", workers: int = 1, device: str = "auto", resume: bool = False,
            force: bool = False, uncertainty: bool = False, fast: bool = False, loadResults: bool = False,
            wait: bool = True, onProgress: Callable[[int], None] | None = None,
            onLog: Callable[[str], None] | None = None, onCase: Callable[[BatchCase], None] | None = None,
            onFinished: Callable[[Any, str | None], None] | None = None):
        """Segment every case of ``inputFolder`` (a folder, CSV or dataset.json), or the scene ``volumeNodes``;
        return a :class:`BatchResult` (``wait=True``) or None at once.

        ``onCase(BatchCase)`` follows each finished case, ``onProgress(percent)`` the engine's bar and ``onLog`` every
        other line; ``onFinished(result, error)`` as for every engine job. ``loadResults`` reads each ok case's output
        into a new segmentation node (on the scene volume's grid for scene input). A failed case is not an error; an
        engine that could not start the run (exit 2) raises RuntimeError with its one-line error.
        """
        if (inputFolder is None) == (volumeNodes is None):
            raise ValueError("give either an input folder or the scene volumes to segment")
        # every argument checked as the engine's command line takes it (format, workers, resume with force, ...)
        # before anything is exported or run
        batchArgv("python", "in", outputFolder or "out", model, outputFormat, workers, resume=resume,
                  uncertainty=uncertainty, fast=fast, device=device, force=force)
        if volumeNodes is not None:
            volumeNodes = list(volumeNodes)
            if not volumeNodes or any(node is None or node.GetImageData() is None for node in volumeNodes):
                raise ValueError("select at least one volume with image data")
            if outputFormat == "dcm":
                raise ValueError("DICOM SEG output needs DICOM series as input: choose an input folder")
        elif not Path(inputFolder).exists():
            raise ValueError(f"{inputFolder}: no such input folder or file")
        if loadResults and outputFormat not in LOADABLE_FORMATS:
            raise ValueError("DICOM SEG results are not loaded here: load them with the DICOM module")
        if not str(outputFolder).strip():
            raise ValueError("choose an output folder")
        outputFolder = Path(outputFolder)

        def makeRun(workspace: TemporaryWorkspace) -> _Run:
            return _Run(outputFolder, outputFormat, str(model), {}, loadResults, onCase, workspace=workspace,
                        onProgress=onProgress, onLog=onLog, onFinished=onFinished)

        def prepare(run: _Run) -> tuple[list[str], dict[str, str]]:
            inputPath = Path(inputFolder) if inputFolder is not None else self._exportVolumes(run, volumeNodes)
            argv = batchArgv(self.python or pythonExecutable(), inputPath, run.outputFolder, model, outputFormat,
                             workers, resume=resume, uncertainty=uncertainty, fast=fast, device=device, force=force)
            return argv, engineEnvironment(self.engineFolder, os.environ.get("PYTHONPATH"))

        return self._runJob(makeRun, prepare, wait)

    @staticmethod
    def _exportVolumes(run: _Run, volumeNodes: Sequence[Any]) -> Path:
        """Each scene volume as ``<id>.nrrd`` in the run's temporary folder (the engine's input folder)."""
        folder = run.workspace.path / "inputs"
        folder.mkdir()
        for node in volumeNodes:
            caseId = caseIdForName(node.GetName(), list(run.volumes))
            exportVolumeToFile(node, folder / f"{caseId}.nrrd")
            run.volumes[caseId] = node
        return folder

    def _onLine(self, run: _Run, line: str) -> None:
        """Case and summary lines are parsed (and still logged); everything else as for every engine job."""
        self._inCallback.active = True  # so that cancel() called from onCase does not wait for this very callback
        try:
            case = parseCaseLine(line)
            if case is not None:
                run.cases.append(case)
                if run.onCase:
                    run.onCase(case)
            elif (summary := parseSummaryLine(line)) is not None:
                run.summary = summary
        finally:
            self._inCallback.active = False
        super()._onLine(run, line)

    def _finish(self, run: _Run, code: ExitCode | None) -> Any:
        """Exit 1 after the summary line is a finished run with failed cases, not a failure of the run."""
        return super()._finish(run, 0 if code == SOME_FAILED and run.summary is not None else code)

    def _importResult(self, run: _Run) -> BatchResult:
        okCount, failedCount, summaryPath = run.summary or (
            sum(case.status == "ok" for case in run.cases), sum(case.status == "failed" for case in run.cases), None)
        result = BatchResult(run.outputFolder, run.outputFormat, summaryPath, okCount, failedCount, list(run.cases))
        if run.loadResults:
            try:
                for caseId, outputPath in self._okOutputs(run, summaryPath):
                    result.segmentationNodes.append(self._loadCase(run, caseId, outputPath))
            except BaseException:  # all or nothing: a half-loaded cohort would be mistaken for the whole
                for node in result.segmentationNodes:
                    removeNodeAndDependents(node)
                raise
        return result

    @staticmethod
    def _okOutputs(run: _Run, summaryPath: Path | None) -> list[tuple[str, Path]]:
        """(id, output) of every ok case: from summary.csv (it also lists the cases a resumed run skipped), else
        from the case lines with the contract's ``OUT_DIR/<id>.<format>``."""
        if summaryPath is not None and summaryPath.is_file():
            with summaryPath.open(newline="", encoding="utf-8") as handle:
                rows = [row for row in csv.DictReader(handle) if row.get("status") == "ok"]
            return [(row["id"], Path(row.get("output") or run.outputFolder / f"{row['id']}.{run.outputFormat}"))
                    for row in rows]
        return [(case.id, run.outputFolder / f"{case.id}.{run.outputFormat}") for case in run.cases
                if case.status == "ok"]

    def _loadCase(self, run: _Run, caseId: str, outputPath: Path):
        """One output as a segmentation node named after the case, labels from its sidecar; on the scene volume's
        grid for scene input, else on the output's own grid (the input's, by the engine's contract)."""
        import slicer

        if not outputPath.is_absolute():
            outputPath = run.outputFolder / outputPath
        sidecarPath = Path(f"{outputPath}.json")
        try:
            sidecar = json.loads(sidecarPath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"case {caseId}: cannot read the sidecar {sidecarPath} ({exc})") from exc
        modelId = str(sidecar.get("model") or Path(run.model).name)
        name = f"{caseId} {modelId} segmentation"
        volumeNode = run.volumes.get(caseId)
        if volumeNode is not None:
            return importLabelmapToSegmentation(outputPath, sidecar.get("labels", []), volumeNode, name=name)
        scene = slicer.mrmlScene
        reference = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName(f"__{caseId}"))
        try:
            storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()  # not in the scene: nothing to clean up
            storageNode.SetFileName(str(outputPath))
            storageNode.ForceRightHandedIJKCoordinateSystemOff()  # the output's own indexing is the input's grid
            if not outputPath.is_file() or not storageNode.ReadData(reference):
                raise RuntimeError(f"case {caseId}: cannot read the output {outputPath}")
            node = importLabelmapToSegmentation(outputPath, sidecar.get("labels", []), reference, name=name)
            node.RemoveNodeReferenceIDs(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
            return node  # the geometry stays in the node's conversion parameters
        finally:
            removeNodeAndDependents(reference)
            logging.debug("CADSegment: loaded case %s from %s", caseId, outputPath)
