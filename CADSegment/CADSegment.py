"""CADSegment: automatic segmentation of a volume with a CADExtension model (3D U-Net, optionally cascaded).

Layer 3 (Slicer module): imports qt/ctk/slicer only. The work is done by ``CADSegmentLib.SegmentationLogic``, which
runs the engine (``python -m cadcore segment``) in a background process; this file never imports torch, MONAI or
cadcore. Scripted use (no GUI)::

    import CADSegment
    segmentationNode = CADSegment.CADSegmentLogic().run(volumeNode, model="hippocampus-unet", device="cpu")
"""

import logging
import os
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DEVICES = ("auto", "cpu", "cuda", "mps")


class CADSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CAD Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["CADExtension"]
        self.parent.contributors = ["The CADExtension authors"]
        self.parent.helpText = _(
            "Segment a CT or MR volume automatically with a CADExtension model. The result is a segmentation with "
            "named, coloured segments; existing segments are never overwritten. Optionally an uncertainty map is "
            "shown as an overlay. The Batch section segments a folder or the scene's volumes in one background run. "
            '<a href="https://github.com/cadextension/SlicerCADExtension#readme">Documentation</a>.')
        self.parent.acknowledgementText = _("Built on 3D Slicer, MONAI and PyTorch.")
        slicer.app.connect("startupCompleted()", registerCADAIEffect)
        slicer.app.connect("aboutToQuit()", stopPromptEngine)


def registerCADAIEffect() -> None:
    """Add the CAD AI effect to the Segment Editor (Slicer's ScriptedSegmentEditorEffect template pattern)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    effectPath = os.path.join(os.path.dirname(__file__), "CADSegmentEffects", "SegmentEditorEffect.py")
    instance.setPythonSource(effectPath.replace("\\", "/"))
    instance.self().register()


def stopPromptEngine() -> None:
    """Stop the local engine server the CAD AI effect started (it would otherwise outlive Slicer until atexit)."""
    from CADSegmentLib.PromptEngine import stopSharedEngine

    stopSharedEngine()


@parameterNodeWrapper
class CADSegmentParameterNode:
    """What the panel shows, saved with the scene.

    inputVolume - the volume to segment.
    model - registry id of the model (see the CAD Extension model manager).
    device - where the engine runs; "auto" picks CUDA, then Apple MPS, then CPU.
    overlap - sliding-window overlap: higher is smoother and slower.
    useCascade - run a cascaded model coarse-to-fine (off: the fine network on the whole volume).
    fast - run at the card's low "fast" resolution (offered only for models whose card names one).
    outputSegmentation - the segmentation to add segments to; None creates a new one.
    uncertainty - also compute the voxel uncertainty map, shown as an overlay (its per-label means go to the log).
    improveVolume, improveSegmentation - the pair the "Add pair" button adds to the fine-tuning cases (the list of
    pairs itself is panel state). improveModelName, improveEpochs, improveOverwrite - the new model's id (empty:
    the suggestion), the epochs, and whether an existing model of that id may be replaced.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = 0.5
    useCascade: bool = True
    fast: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    uncertainty: bool = False
    improveVolume: vtkMRMLScalarVolumeNode
    improveSegmentation: vtkMRMLSegmentationNode
    improveModelName: str = ""
    improveEpochs: Annotated[int, WithinRange(1, 2000)] = 50
    improveOverwrite: bool = False


class CADSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models = {}
        self._timer = None
        self.improveSection = None
        self.batchSection = None
        self._warnings = []  # the engine's warnings of the current segmentation, shown above the log

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        import CADExtensionWidgets  # noqa: F401 (registers the model selector's parameter-node connector)
        from CADSegmentWidgets import BatchSection, ImproveModelSection

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CADSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CADSegmentLogic()

        # The engine's callbacks are queued by its reader thread and delivered here, on the main thread.
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.logic.processEvents)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self._updateModelDescription)
        self.ui.manageModelsButton.connect("clicked(bool)", lambda: slicer.util.selectModule("CADExtension"))
        self.improveSection = ImproveModelSection(self)  # the "Improve model" section's buttons and state
        self.batchSection = BatchSection(self)  # the "Batch" section: cad batch in the background
        self._showWarnings([])

        self.refreshModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        for job in ("improve", "batch"):
            if self.logic is not None and getattr(self.logic, job).isRunning():
                getattr(self.logic, job).cancel()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.refreshModels()  # models imported in the model manager appear on return
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic.isRunning():
            self.logic.cancel()  # its input volume is about to disappear
        self.improveSection.sceneClosed()
        self.batchSection.sceneClosed()
        self._showWarnings([])
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        if not self._parameterNode.model:  # a fresh parameter node: take the user's default device
            import CADExtension

            self._parameterNode.device = CADExtension.CADExtensionLogic().defaultDevice()
            if self._models:
                self._parameterNode.model = next(iter(self._models))

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def refreshModels(self) -> None:
        from CADExtensionWidgets import populateModelSelector

        import CADExtension

        try:
            models = CADExtension.CADExtensionLogic().listModels(task="segmentation", guided=False)
        except Exception as exc:  # e.g. the model manager is not installed: the panel still opens and says why
            logging.error("CADSegment: cannot list models: %s", exc)
            self.ui.modelDescriptionLabel.text = _("Cannot list models: {error}").format(error=exc)
            return
        self._models = {info.id: info for info in models}
        populateModelSelector(self.ui.modelSelector, models)
        self.batchSection.modelsChanged(models)
        self._updateModelDescription()

    def _updateModelDescription(self, index=None) -> None:
        from CADExtensionLib.model_summary import modelDescription
        from CADExtensionWidgets import selectedModelId
        from CADSegmentLib import fastOption, uncertaintyOption

        modelId = selectedModelId(self.ui.modelSelector)
        info = self._models.get(modelId)
        self.ui.modelDescriptionLabel.text = modelDescription(info, modelId)
        enabled, tooltip = fastOption(info)  # disabled, saying why, when the card names no fast resolution
        self.ui.fastCheckBox.enabled = enabled
        self.ui.fastCheckBox.toolTip = tooltip
        if not enabled and self._parameterNode and self._parameterNode.fast:
            self._parameterNode.fast = False
        enabled, tooltip = uncertaintyOption(info)  # disabled, saying why, for models that give no map
        self.ui.uncertaintyCheckBox.enabled = enabled
        self.ui.uncertaintyCheckBox.toolTip = tooltip
        self.improveSection.modelChanged(modelId, info)

    def _checkCanApply(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        segmenting, improving, batching = (self.logic.isRunning(), self.logic.improve.isRunning(),
                                           self.logic.batch.isRunning())
        self.improveSection.updateRunningState(segmenting or batching, improving)  # one engine job at a time
        self.batchSection.updateRunningState(segmenting or improving, batching)
        if segmenting or improving or batching:
            self.ui.applyButton.enabled = segmenting  # it is the Cancel button now; no segmenting while training
            return
        if parameters and parameters.inputVolume and parameters.model:
            self.ui.applyButton.toolTip = _("Segment the input volume")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select an input volume and a model")
            self.ui.applyButton.enabled = False

    def _updateRunningState(self) -> None:
        """What runs decides the panel: its button becomes Cancel, the inputs of either job wait, the timer that
        delivers the engine's callbacks runs."""
        segmenting, busy = self.logic.isRunning(), self.logic.improve.isRunning() or self.logic.batch.isRunning()
        self.ui.applyButton.text = _("Cancel") if segmenting else _("Apply")
        self.ui.applyButton.toolTip = _("Stop the segmentation; nothing is added to the scene") if segmenting else ""
        for widget in (self.ui.inputsCollapsibleButton, self.ui.speedCollapsibleButton,
                       self.ui.outputsCollapsibleButton):
            widget.enabled = not (segmenting or busy)
        if segmenting or busy:
            self._timer.start()
        else:
            self._timer.stop()
        self._checkCanApply()

    def _log(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def _showWarnings(self, warnings) -> None:
        """The engine's warnings of the current run, prominently above the log (hidden when there are none)."""
        self._warnings = list(warnings)
        self.ui.warningLabel.text = "\n".join(_("Warning: {text}").format(text=text) for text in self._warnings)
        self.ui.warningLabel.visible = bool(self._warnings)

    def _onWarning(self, text: str) -> None:
        self._showWarnings([*self._warnings, text])

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()  # delivers onFinished(None, "cancelled"), which restores the panel
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            import CADExtension

            if not CADExtension.CADExtensionLogic().ensureDependencies(askConfirmation=True):
                self._log(_("Dependencies are not installed; see the CAD Extension module."))
                return
            parameters = self._parameterNode
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self._showWarnings([])
            self._log(_("Segmenting {volume} with {model} on {device}…").format(
                volume=parameters.inputVolume.GetName(), model=parameters.model, device=parameters.device))
            self.logic.run(parameters.inputVolume, model=parameters.model, device=parameters.device,
                           outputSegmentationNode=parameters.outputSegmentation, wait=False,
                           overlap=parameters.overlap, useCascade=parameters.useCascade,
                           fast=parameters.fast and self.ui.fastCheckBox.enabled,
                           uncertainty=parameters.uncertainty and self.ui.uncertaintyCheckBox.enabled,
                           onProgress=self._onProgress, onLog=self._log, onWarning=self._onWarning,
                           onFinished=self._onFinished)
            self._updateRunningState()

    def _onProgress(self, percent: int) -> None:
        self.ui.progressBar.value = percent

    def _onFinished(self, segmentationNode, error) -> None:
        self._updateRunningState()
        if error is None:
            self.ui.progressBar.value = 100
            if self._parameterNode:
                self._parameterNode.outputSegmentation = segmentationNode
            self._log(_("Done: {segmentation}").format(segmentation=segmentationNode.GetName()))
            from CADExtensionLib.overlays import showOverlay
            from CADSegmentLib.SegmentationLogic import UNCERTAINTY_REFERENCE

            uncertaintyNode = segmentationNode.GetNodeReference(UNCERTAINTY_REFERENCE)
            if uncertaintyNode is not None and self._parameterNode and self._parameterNode.inputVolume:
                showOverlay(uncertaintyNode, self._parameterNode.inputVolume, 0.5)
                self._log(_("Uncertainty map: {name} (overlay in the slice views)").format(
                    name=uncertaintyNode.GetName()))
        elif error == "cancelled":
            self.ui.progressBar.value = 0
            self._log(_("Cancelled; nothing was added to the scene."))
        else:
            self._log(error)
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=error))


class CADSegmentLogic(ScriptedLoadableModuleLogic):
    """The module's logic: a thin facade over ``CADSegmentLib.SegmentationLogic``, and ``improve``, the
    ``CADSegmentLib.ImproveModelLogic`` of "Improve model" (see their docstrings)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._segmentation = None
        self._improve = None
        self._batch = None

    def getParameterNode(self):
        return CADSegmentParameterNode(super().getParameterNode())

    @property
    def segmentation(self):
        if self._segmentation is None:
            from CADSegmentLib import SegmentationLogic

            self._segmentation = SegmentationLogic()
        return self._segmentation

    def run(self, volumeNode, model: str = "hippocampus-unet", device: str = "auto", outputSegmentationNode=None,
            wait: bool = True, **kwargs):
        """Segment ``volumeNode``; returns the segmentation node (``wait=True``). Keyword arguments (overlap,
        useCascade, fast, uncertainty, strict, onProgress, onLog, onWarning, onFinished) go to
        ``SegmentationLogic.run``."""
        return self.segmentation.run(volumeNode, model=model, device=device,
                                     outputSegmentationNode=outputSegmentationNode, wait=wait, **kwargs)

    def cancel(self) -> bool:
        return self._segmentation.cancel() if self._segmentation is not None else False

    def isRunning(self) -> bool:
        return self._segmentation is not None and self._segmentation.isRunning()

    @property
    def improve(self):
        """Fine-tuning: ``logic.improve.run(model, pairs=[(volume, segmentation), ...])`` registers a new model."""
        if self._improve is None:
            from CADSegmentLib import ImproveModelLogic

            self._improve = ImproveModelLogic()  # the user models folder: $CAD_MODELS, set from the settings
        return self._improve

    @property
    def batch(self):
        """Batch: ``logic.batch.run(outputFolder, model=..., inputFolder=... or volumeNodes=[...])`` runs ``cad batch``
        (``CADSegmentLib.BatchLogic``)."""
        if self._batch is None:
            from CADSegmentLib import BatchLogic

            self._batch = BatchLogic()
        return self._batch

    def processEvents(self) -> int:
        return sum(logic.processEvents() for logic in (self._segmentation, self._improve, self._batch)
                   if logic is not None)


class CADSegmentTest(ScriptedLoadableModuleTest):
    """What Slicer runs as this module's self-test: Reload and Test and ``slicer.selfTests["CADSegment"]`` look for
    ``CADSegmentTest`` in the module file. The tests are in ``Testing/Python/CADSegmentModuleTest.py``;
    not run in CI."""

    def runTest(self, **kwargs) -> None:
        from CADExtensionLib.selftests import runModuleTest

        runModuleTest(__file__, "CADSegmentModuleTest", getattr(self, "messageDelay", None), **kwargs)
