"""One AI prompt (clicks, a box, scribbles) → one segment, written the way the Segment Editor writes.

Usable without the GUI (scripts, tests, the CAD AI effect)::

    logic = PromptLogic()                                  # PromptLogic(runner=..., backend=...) in tests
    logic.run(volumeNode, segmentationNode, segmentId, model="hippocampus-interactive",
              positivePoints=[[R, A, S]], segmentEditorNode=editorNode)
    logic.editorLogic.Undo()                               # reverts exactly that prompt
    logic.lastReport["suggested_click"]

**Why through ``vtkSlicerSegmentEditorLogic``.** AI tools that write with ``updateSegmentBinaryLabelmapFromArray``
skip undo and masking and erase finished neighbouring segments. Every write here is ``SaveStateForUndo()`` then
``ModifySegmentByLabelmap(..., ModificationModeSet, isPerSegment=True, bypassMasking=False)`` on the editor node's
settings: its editable area (mask mode, mask segment), source-volume intensity range and overwrite mode apply, and one
prompt is one undo step of :attr:`PromptLogic.editorLogic` (keep one ``PromptLogic`` to undo across prompts; its
history follows one segmentation node and starts over when another is edited). The prompt replaces the segment
inside the editable area (``refine=True`` sends the segment along, so the engine keeps it outside its region).

**Geometry.** Points and the ROI are *world* RAS. The engine reads the exported file, i.e. the volume's *local*
geometry, so they are mapped through the inverse of the volume's parent transform (linear or not). The engine's mask
(on the volume's grid, local frame) is then mapped volume-local → world → segmentation-local and resampled (nearest
neighbour) onto the segmentation's reference geometry, which is what the Segment Editor edits on, also when that
geometry is finer than or differs from the volume's.

**Editor node.** With ``segmentEditorNode=None`` a private editor node with Slicer's defaults (edit everywhere,
overwrite all segments, no intensity range) is used: one per logic, hidden and not saved with the scene, removed by
:meth:`PromptLogic.cleanup`. A given node is used as the Segment Editor would: its segmentation, source volume and
selected segment are set to this prompt's (the editable area depends on which segment is edited).

A failed or cancelled prompt changes no segment, leaves no undo step and no temporary file (the backend's cached
volume file is kept for the next prompt until :meth:`PromptLogic.cleanup`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import slicer
import vtk
from CADExtensionLib.models import ModelManagerLogic
from CADExtensionLib.process import TemporaryWorkspace
from CADExtensionLib.segmentations import exportSegmentToLabelmapFile

from CADSegmentLib.PromptBackends import CommandBackend, PromptAnswer, PromptBackend, PromptCancelled, PromptRequest
from CADSegmentLib.PromptInputs import exportScribble, modelLabelForSegment, roiBoxInVolume, worldToLocal

Point = Sequence[float]
_BINARY_LABELMAP = "Binary labelmap"


class PromptLogic:
    """See the module docstring. ``backend`` computes prompts (default :class:`CommandBackend` on ``runner``);
    ``modelManager`` lists the models (label names; its user folder is passed to the engine). ``editorLogic``: write
    through an existing ``vtkSlicerSegmentEditorLogic`` (e.g. the Segment Editor's own, so that its undo history
    holds the prompts) instead of a private one."""

    def __init__(self, runner=None, backend: PromptBackend | None = None,
                 modelManager: ModelManagerLogic | None = None, device: str = "auto",
                 engineFolder: str | os.PathLike[str] | None = None, python: str | None = None,
                 temporaryFolder: str | os.PathLike[str] | None = None, editorLogic=None,
                 writer: Callable[[Any, str, Any], None] | None = None) -> None:
        self.modelManager = modelManager
        self.backend: PromptBackend = backend if backend is not None else CommandBackend(
            runner, engineFolder, python, temporaryFolder, device,
            modelsFolder=modelManager.userFolder if modelManager is not None else None)
        self.temporaryFolder = temporaryFolder
        self.editorLogic = editorLogic if editorLogic is not None else slicer.vtkSlicerSegmentEditorLogic()
        self.writer = writer
        """``writer(segmentationNode, segmentId, modifierLabelmap)`` replaces the write step: the CAD AI effect passes
        its adaptor's ``saveStateForUndo`` + ``modifySelectedSegmentByLabelmap``, so the Segment Editor widget's own
        logic (whose undo stack Ctrl+Z walks) writes; None: :attr:`editorLogic` writes (scripts, tests)."""
        self.lastReport: dict[str, Any] | None = None
        self.lastTimings: dict[str, float] = {}  # seconds: "backend" (engine and transfer), "write" (MRML)
        self.lastUncertaintyNode = None
        self._uncertaintyNodeIds: dict[tuple[str, str], str] = {}
        self._privateEditorNode = None
        self._lock = threading.Lock()
        self._job: dict[str, Any] | None = None
        self._finished: queue.SimpleQueue = queue.SimpleQueue()

    # --- public --------------------------------------------------------------------------------------------------

    def run(self, volumeNode, segmentationNode, segmentId: str, model: str = "hippocampus-interactive",
            label: int | None = None, positivePoints: Sequence[Point] = (), negativePoints: Sequence[Point] = (),
            roi=None, segmentEditorNode=None, wait: bool = True, scribble=None, refine: bool = False,
            uncertainty: bool = False, onFinished: Callable[[Any, str | None], None] | None = None):
        """Run one prompt and write it into segment ``segmentId``; the engine's report (``wait=True``) or None.

        ``label`` defaults to the model's label named like the segment. ``roi``: see :func:`roiBoxInVolume`.
        ``scribble``: a ``vtkMRMLLabelMapVolumeNode`` on the volume's grid (1 = the structure, 2 = not it).
        ``refine``: the segment is sent as ``--previous``. ``uncertainty``: the map becomes the scalar volume
        :attr:`lastUncertaintyNode` ("<segment> uncertainty", replaced by the next map of that segment; an undo
        reverts the segment, not the map).
        ``onFinished(report, error)`` is called once, in both modes (``error`` None, ``"cancelled"`` or the message).
        ``wait=False`` returns at once: the backend runs on a worker thread and the write happens on the thread that
        calls :meth:`processEvents` (inside Slicer: a ``qt.QTimer`` on the main thread). A failure raises RuntimeError
        carrying the engine's one line (``wait=True``); a cancelled prompt raises :class:`PromptCancelled`.
        """
        if volumeNode is None or volumeNode.GetImageData() is None or volumeNode.GetScene() is None:
            raise ValueError("the volume node must be in a scene and have image data")
        if segmentationNode is None or segmentationNode.GetScene() is not volumeNode.GetScene():
            raise ValueError("the segmentation node must be in the volume's scene")
        if segmentEditorNode is not None and segmentEditorNode.GetScene() is not volumeNode.GetScene():
            raise ValueError("the segment editor node must be in the volume's scene")
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        if segment is None:
            raise ValueError(f"{segmentationNode.GetName()!r} has no segment with ID {segmentId!r}")
        if label is None:
            label = modelLabelForSegment(segment.GetName(), model, self.modelManager)
        toLocal = worldToLocal(volumeNode)
        request = PromptRequest(
            str(model), int(label),
            tuple(tuple(toLocal.TransformPoint([float(v) for v in p])) for p in positivePoints),
            tuple(tuple(toLocal.TransformPoint([float(v) for v in p])) for p in negativePoints),
            roiBoxInVolume(volumeNode, roi) if roi is not None else None, bool(uncertainty))
        with self._lock:
            if self._job is not None:
                raise RuntimeError("a prompt is already running; cancel it or wait for it first")
            self._job = job = {"state": "running", "onFinished": onFinished}
        workspace = None
        try:
            workspace = TemporaryWorkspace(prefix="CADSegment-prompt-", parent=self.temporaryFolder)
            scribblePath = exportScribble(volumeNode, scribble, workspace.path) if scribble is not None else None
            previousPath = None
            if refine:
                try:
                    previousPath = exportSegmentToLabelmapFile(segmentationNode, segmentId, volumeNode,
                                                               workspace.path / "previous.nrrd")
                except ValueError as exc:
                    if "is empty" not in str(exc):
                        raise
            prepare = getattr(self.backend, "prepareVolume", None)
            if prepare is not None:
                prepare(volumeNode)  # reads MRML: here, on the calling thread
            job.update(volumeNode=volumeNode, segmentationNode=segmentationNode, segmentId=segmentId,
                       editorNode=self._editorNode(volumeNode.GetScene(), segmentEditorNode), workspace=workspace)
            self._attach(job)  # refuses a segmentation it cannot edit before the engine runs
        except BaseException:
            if workspace is not None:
                workspace.cleanup()
            self._release(job)
            raise
        call = (volumeNode, request, previousPath, scribblePath, workspace.path)
        if wait:
            return self._complete(job, *self._call(call))
        threading.Thread(target=lambda: self._finished.put((job, *self._call(call))),
                         name="CADSegment prompt", daemon=True).start()
        return None

    def isRunning(self) -> bool:
        return self._job is not None

    def processEvents(self) -> int:
        """Write a finished non-blocking prompt (and call its ``onFinished``) on this thread; how many were done."""
        count = 0
        while True:
            try:
                job, answer, error = self._finished.get_nowait()
            except queue.Empty:
                return count
            try:
                self._complete(job, answer, error)
            except Exception as exc:  # reported through onFinished already
                logging.debug("CADSegment: prompt ended with %s", exc)
            count += 1

    def wait(self, timeout: float | None = None, interval: float = 0.02) -> bool:
        """Block until a non-blocking prompt is written (calling :meth:`processEvents`); False on timeout."""
        waited = 0.0
        while True:
            self.processEvents()
            if self._job is None:
                return True
            if timeout is not None and waited >= timeout:
                return False
            threading.Event().wait(interval)
            waited += interval

    def cancel(self) -> bool:
        """Stop the running prompt: nothing is written; False when none is running or it is being written."""
        with self._lock:
            job = self._job
            if job is None or job["state"] != "running":
                return False
            job["state"] = "cancelled"
        cancel = getattr(self.backend, "cancel", None)
        if cancel is not None:
            cancel()
        return True

    def cleanup(self) -> None:
        """Remove the private editor node and the backend's cached files (``close()``)."""
        node, self._privateEditorNode = self._privateEditorNode, None
        if node is not None and node.GetScene() is not None:
            node.GetScene().RemoveNode(node)
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    # --- steps ---------------------------------------------------------------------------------------------------

    def _call(self, call) -> tuple[PromptAnswer | None, BaseException | None]:
        started = time.perf_counter()
        try:
            return self.backend.interact(*call), None
        except BaseException as exc:  # delivered to the thread that completes the job
            return None, exc
        finally:
            self.lastTimings = {"backend": time.perf_counter() - started}

    def _complete(self, job: dict[str, Any], answer: PromptAnswer | None, error: BaseException | None):
        """Write the answer (unless cancelled or failed), notify, and free the logic; raise on failure."""
        try:
            with self._lock:
                if job["state"] == "cancelled" and error is None:
                    error = PromptCancelled("prompt cancelled")
                job["state"] = "writing"
            if error is not None:
                raise error
            assert answer is not None
            started = time.perf_counter()
            modifier = self._modifier(job, answer.maskPath)  # everything that can fail, before the undo step
            if answer.uncertaintyPath is not None:
                self.lastUncertaintyNode = self._importUncertainty(job, answer.uncertaintyPath)
            if self.writer is not None:
                self.writer(job["segmentationNode"], job["segmentId"], modifier)
            else:
                self.editorLogic.SaveStateForUndo()
                self.editorLogic.ModifySegmentByLabelmap(job["segmentationNode"], job["segmentId"], modifier,
                                                         self.editorLogic.ModificationModeSet, True, False)
            self.lastReport = answer.report
            self.lastTimings["write"] = time.perf_counter() - started
        except BaseException as exc:
            message = "cancelled" if isinstance(exc, PromptCancelled) else str(exc)
            self._notify(job, None, message)
            raise
        finally:
            job["workspace"].cleanup()
            self._release(job)
        self._notify(job, answer.report, None)
        return answer.report

    def _release(self, job) -> None:
        with self._lock:
            if self._job is job:
                self._job = None

    @staticmethod
    def _notify(job, report, error: str | None) -> None:
        if job.get("onFinished") is None:
            return
        try:
            job["onFinished"](report, error)
        except Exception:
            logging.exception("CADSegment: error in onFinished")

    def _editorNode(self, scene, segmentEditorNode):
        if segmentEditorNode is not None:
            return segmentEditorNode
        node = self._privateEditorNode
        if node is None or node.GetScene() is not scene:
            node = slicer.vtkMRMLSegmentEditorNode()  # Slicer's defaults
            node.SetName(scene.GenerateUniqueName("CADSegment prompt editor"))
            node.SetHideFromEditors(True)
            node.SetSaveWithScene(False)
            scene.AddNode(node)
            self._privateEditorNode = node
        return node

    def _attach(self, job) -> None:
        """Point the editor logic at this prompt's editor node, segmentation, source volume and segment, as the
        Segment Editor would (the editable area depends on which segment is edited)."""
        logic, editorNode = self.editorLogic, job["editorNode"]
        segmentationNode = job["segmentationNode"]
        if logic.GetMRMLScene() is not segmentationNode.GetScene():
            logic.SetMRMLScene(segmentationNode.GetScene())
        logic.SetSegmentEditorNode(editorNode)
        logic.SetSegmentationNode(segmentationNode)
        logic.SetSourceVolumeNode(job["volumeNode"])
        editorNode.SetSelectedSegmentID(job["segmentId"])
        if segmentationNode.GetSegmentation().GetSourceRepresentationName() != _BINARY_LABELMAP and \
                not logic.TrivialSetSourceRepresentationToBinaryLabelmap():
            raise ValueError(f"{segmentationNode.GetName()!r} is not edited as a binary labelmap; convert it in the "
                             "Segment Editor first")

    def _modifier(self, job, maskPath: Path):
        """The engine's mask as a ``vtkOrientedImageData`` on the segmentation's reference geometry (the Segment
        Editor's modifier labelmap): volume-local → world → segmentation-local, nearest neighbour."""
        segmentationNode = job["segmentationNode"]
        if job["volumeNode"].GetScene() is None or segmentationNode.GetScene() is None or \
                segmentationNode.GetSegmentation().GetSegment(job["segmentId"]) is None:
            raise RuntimeError("the volume, segmentation or segment of this prompt was removed; nothing was written")
        self._attach(job)
        if not self.editorLogic.UpdateReferenceGeometryImage():
            raise RuntimeError(f"{segmentationNode.GetName()!r} has no reference geometry to edit on")
        labelmap = slicer.vtkMRMLLabelMapVolumeNode()  # never added to the scene
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(maskPath))
        if not storage.ReadData(labelmap) or labelmap.GetImageData() is None:
            raise RuntimeError(f"{maskPath}: cannot read the engine's mask")
        mask = slicer.vtkOrientedImageData()
        mask.ShallowCopy(labelmap.GetImageData())
        ijkToRAS = vtk.vtkMatrix4x4()
        labelmap.GetIJKToRASMatrix(ijkToRAS)
        mask.SetImageToWorldMatrix(ijkToRAS)  # the volume's local frame
        volumeToSegmentation = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(job["volumeNode"].GetParentTransformNode(),
                                                             segmentationNode.GetParentTransformNode(),
                                                             volumeToSegmentation)
        modifier = slicer.vtkOrientedImageData()
        if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                mask, self.editorLogic.GetReferenceGeometryImage(), modifier, False, False, volumeToSegmentation, 0):
            raise RuntimeError("resampling the engine's mask onto the segmentation's geometry failed")
        return modifier

    def _importUncertainty(self, job, path: Path):
        """The uncertainty map as a scalar volume under the volume's transform, one node per segment (replaced)."""
        scene, volumeNode = job["volumeNode"].GetScene(), job["volumeNode"]
        segmentationNode, segmentId = job["segmentationNode"], job["segmentId"]
        key = (segmentationNode.GetID(), segmentId)
        node = scene.GetNodeByID(self._uncertaintyNodeIds.get(key, ""))
        created = node is None
        if created:
            name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{name} uncertainty"))
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()  # not in the scene: nothing to clean up
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            if created:
                scene.RemoveNode(node)
            raise RuntimeError(f"{path}: cannot read the engine's uncertainty map")
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        if created:
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            display.SetAutoWindowLevel(False)
            display.SetWindowLevelMinMax(0.0, 1.0)
            self._uncertaintyNodeIds[key] = node.GetID()
        return node
