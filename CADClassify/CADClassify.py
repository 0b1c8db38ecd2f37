"""CADClassify: classify a lesion (segment, point or ROI, or the whole volume) with calibrated probabilities,
a Grad-CAM heatmap overlay and the classical radiomics baseline's features.

Layer 3 (Slicer module): imports qt/ctk/slicer only. The work is done by ``CADClassifyLib.ClassificationLogic``, which
runs the engine (``python -m cadcore classify``) in a background process; this file never imports torch, MONAI or
cadcore. Scripted use (no GUI)::

    import CADClassify
    result = CADClassify.CADClassifyLogic().run(volumeNode, model=modelId, segmentationNode=seg, segmentId=sid)
    result.predicted, result.probabilities, result.tableNode, result.heatmapNode, result.featureTableNode
"""

import logging
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class CADClassify(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CAD Classify")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["CADExtension"]
        self.parent.contributors = ["The CADExtension authors"]
        self.parent.helpText = _(
            "Classify a lesion with a CADExtension model: calibrated class probabilities in a table, a Grad-CAM "
            "heatmap over the slice views, and the classical baseline's hand-crafted features. "
            '<a href="https://github.com/cadextension/SlicerCADExtension#readme">Documentation</a>.')
        self.parent.acknowledgementText = _("Built on 3D Slicer, MONAI and PyTorch.")


@parameterNodeWrapper
class CADClassifyParameterNode:
    """inputVolume - the volume; lesionMarkups - a point list (first point) or ROI marking the lesion;
    model - registry id of a classification model; heatmapOpacity - foreground opacity of the heatmap overlay.
    The lesion segment is chosen in the panel (Slicer has no parameter connector for the segment selector)."""

    inputVolume: vtkMRMLScalarVolumeNode
    lesionMarkups: Optional[Union[vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsROINode]]  # noqa: UP007, UP045
    model: str = ""
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


class CADClassifyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models = {}
        self._heatmapNode = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        import CADExtensionWidgets  # noqa: F401 (registers the model selector's parameter-node connector)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CADClassify.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CADClassifyLogic()

        # The engine's callbacks are queued by its reader thread and delivered here, on the main thread.
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.logic.processEvents)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self._updateModelDescription)
        self.ui.manageModelsButton.connect("clicked(bool)", lambda: slicer.util.selectModule("CADExtension"))
        for button in (self.ui.lesionSegmentRadioButton, self.ui.lesionMarkupsRadioButton,
                       self.ui.lesionVolumeRadioButton):
            button.connect("toggled(bool)", self._updateLesionWidgets)
        self.ui.lesionSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._checkCanApply)
        self.ui.lesionSegmentSelector.connect("currentSegmentChanged(QString)", self._checkCanApply)

        self.refreshModels()
        self._updateLesionWidgets()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.refreshModels()
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic.isRunning():
            self.logic.cancel()  # its input volume is about to disappear
        self._showResult(None)
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
        if not self._parameterNode.model and self._models:
            self._parameterNode.model = next(iter(self._models))

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def refreshModels(self) -> None:
        from CADExtensionWidgets import populateModelSelector

        import CADExtension

        try:
            models = CADExtension.CADExtensionLogic().listModels(task="classification")
        except Exception as exc:
            logging.error("CADClassify: cannot list models: %s", exc)
            self.ui.modelDescriptionLabel.text = _("Cannot list models: {error}").format(error=exc)
            return
        self._models = {info.id: info for info in models}
        populateModelSelector(self.ui.modelSelector, models)
        self._updateModelDescription()

    def _updateModelDescription(self, index=None) -> None:
        from CADExtensionLib.model_summary import modelDescription
        from CADExtensionWidgets import selectedModelId

        modelId = selectedModelId(self.ui.modelSelector)
        self.ui.modelDescriptionLabel.text = modelDescription(self._models.get(modelId), modelId)

    def _updateLesionWidgets(self, checked=None) -> None:
        self.ui.lesionSegmentSelector.enabled = self.ui.lesionSegmentRadioButton.checked
        self.ui.lesionMarkupsSelector.enabled = self.ui.lesionMarkupsRadioButton.checked
        self._checkCanApply()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._checkCanApply()
        self._applyHeatmapOpacity()

    def _checkCanApply(self, *args) -> None:
        if self.logic.isRunning():
            self.ui.applyButton.enabled = True  # it is the Cancel button now
            return
        parameters = self._parameterNode
        segmentChosen = self.ui.lesionSegmentRadioButton.checked and self.ui.lesionSegmentSelector.currentSegmentID()
        markupsChosen = self.ui.lesionMarkupsRadioButton.checked and parameters and parameters.lesionMarkups
        lesionChosen = self.ui.lesionVolumeRadioButton.checked or segmentChosen or markupsChosen
        enabled = bool(parameters and parameters.inputVolume and parameters.model and lesionChosen)
        self.ui.applyButton.enabled = enabled
        self.ui.applyButton.toolTip = _("Classify the lesion") if enabled else _(
            "Select an input volume, a lesion and a model")

    def _lesionArguments(self) -> dict:
        if self.ui.lesionSegmentRadioButton.checked:
            return {"segmentationNode": self.ui.lesionSegmentSelector.currentNode(),
                    "segmentId": self.ui.lesionSegmentSelector.currentSegmentID()}
        if self.ui.lesionMarkupsRadioButton.checked:
            return markupsArguments(self._parameterNode.lesionMarkups)
        return {}

    def _setRunning(self, running: bool) -> None:
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.inputsCollapsibleButton.enabled = not running
        if running:
            self._timer.start()
        else:
            self._timer.stop()
        self._checkCanApply()

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()  # delivers onFinished(None, "cancelled"), which restores the panel
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the classification."), waitCursor=True):
            import CADExtension

            if not CADExtension.CADExtensionLogic().ensureDependencies(askConfirmation=True):
                self.ui.logTextEdit.appendPlainText(_("Dependencies are not installed; see the CAD Extension module."))
                return
            parameters = self._parameterNode
            self._showResult(None)
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self.logic.run(parameters.inputVolume, model=parameters.model,
                           device=CADExtension.CADExtensionLogic().defaultDevice(), wait=False,
                           onProgress=self._onProgress, onLog=self.ui.logTextEdit.appendPlainText,
                           onFinished=self._onFinished, **self._lesionArguments())
            self._setRunning(True)

    def _onProgress(self, percent: int) -> None:
        self.ui.progressBar.value = percent

    def _onFinished(self, result, error) -> None:
        self._setRunning(False)
        if error is None:
            self._showResult(result)
        elif error == "cancelled":
            self.ui.progressBar.value = 0
            self.ui.logTextEdit.appendPlainText(_("Cancelled; nothing was added to the scene."))
        else:
            self.ui.logTextEdit.appendPlainText(error)
            slicer.util.errorDisplay(_("Classification failed: {error}").format(error=error))

    def _showResult(self, result) -> None:
        self._heatmapNode = getattr(result, "heatmapNode", None)
        self.ui.probabilityTableView.setMRMLTableNode(getattr(result, "tableNode", None))
        featureTable = getattr(result, "featureTableNode", None)
        self.ui.featureTableView.setMRMLTableNode(featureTable)
        self.ui.featuresCollapsibleButton.enabled = featureTable is not None
        if result is None:
            self.ui.predictedClassLabel.text = ""
            return
        self.ui.predictedClassLabel.text = _("{name} (p = {probability:.2f})").format(
            name=result.predicted, probability=float(result.probabilities.get(result.predicted, float("nan"))))
        if self._heatmapNode is not None:
            from CADClassifyLib import showHeatmapOverlay

            showHeatmapOverlay(self._heatmapNode, self._parameterNode.inputVolume, self._parameterNode.heatmapOpacity)

    def _applyHeatmapOpacity(self) -> None:
        """The opacity slider drives the foreground opacity of every slice view showing our heatmap."""
        if self._heatmapNode is None or not self._parameterNode:
            return
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            if composite.GetForegroundVolumeID() == self._heatmapNode.GetID():
                composite.SetForegroundOpacity(self._parameterNode.heatmapOpacity)


def markupsArguments(node) -> dict:
    """The lesion as ``ClassificationLogic.run`` takes it: a point list as ``pointRAS`` (its first point, world
    coordinates, mapped into the volume by the logic); an ROI as its centre plus its edge lengths (``sizeMM``)."""
    if node is None:
        raise ValueError(_("Select a point list or ROI that marks the lesion."))
    if node.IsA("vtkMRMLMarkupsROINode"):
        center, size = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        node.GetCenterWorld(center)
        node.GetSize(size)
        return {"pointRAS": center, "sizeMM": size}
    if node.GetNumberOfControlPoints() < 1:
        raise ValueError(_("Place a point on the lesion first."))
    return {"pointRAS": node}


class CADClassifyLogic(ScriptedLoadableModuleLogic):
    """The module's logic: a thin facade over ``CADClassifyLib.ClassificationLogic``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._classification = None

    def getParameterNode(self):
        return CADClassifyParameterNode(super().getParameterNode())

    @property
    def classification(self):
        if self._classification is None:
            from CADClassifyLib import ClassificationLogic

            self._classification = ClassificationLogic()
        return self._classification

    def run(self, volumeNode, model: str | None = None, wait: bool = True, **kwargs):
        """Classify ``volumeNode``; returns a ``ClassificationResult`` (``wait=True``). Keyword arguments
        (segmentationNode, segmentId, pointRAS, sizeMM, device, onProgress, onLog, onFinished) go to
        ``ClassificationLogic.run``."""
        return self.classification.run(volumeNode, model=model, wait=wait, **kwargs)

    def cancel(self) -> bool:
        return self._classification.cancel() if self._classification is not None else False

    def isRunning(self) -> bool:
        return self._classification is not None and self._classification.isRunning()

    def processEvents(self) -> int:
        return self._classification.processEvents() if self._classification is not None else 0


class CADClassifyTest(ScriptedLoadableModuleTest):
    """What Slicer runs as this module's self-test: Reload and Test and ``slicer.selfTests["CADClassify"]`` look for
    ``CADClassifyTest`` in the module file. The tests are in ``Testing/Python/CADClassifyModuleTest.py``;
    not run in CI."""

    def runTest(self, **kwargs) -> None:
        from CADExtensionLib.selftests import runModuleTest

        runModuleTest(__file__, "CADClassifyModuleTest", getattr(self, "messageDelay", None), **kwargs)
