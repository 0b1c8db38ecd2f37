"""The "Improve model" section of the CADSegment panel: the list of (volume, segmentation) pairs or a data folder,
Start/Cancel, progress, and the training curves when done.

A controller over widgets of ``CADSegment.ui`` (``self.ui`` is the panel's ``childWidgetVariables``), owned by
``CADSegmentWidget``; the work is ``CADSegmentLib.ImproveModelLogic``, reached through the module logic's
``improve``. Its parameters (the pair selectors, name, epochs, replace) live in the panel's parameter node.
"""

import qt
import slicer
from slicer.i18n import tr as _


class ImproveModelSection:
    def __init__(self, widget) -> None:
        self.widget = widget  # CADSegmentWidget: parameter node, log, model list and the panel's running state
        self.ui = widget.ui
        self._pairs = []  # (volume node ID, segmentation node ID) of each case, in order
        self.ui.addPairButton.connect("clicked(bool)", self.onAddPair)
        self.ui.removePairButton.connect("clicked(bool)", self.onRemovePair)
        self.ui.improveButton.connect("clicked(bool)", self.onImproveButton)

    @property
    def logic(self):
        return self.widget.logic.improve

    def sceneClosed(self) -> None:
        """The pairs' nodes are gone; a run already going on keeps its exported copy of the data."""
        self._pairs = []
        self._updatePairsTable()

    def modelChanged(self, modelId, info) -> None:
        self.ui.newModelNameLineEdit.placeholderText = self.logic.suggestModelId(modelId) if info else ""

    def updateRunningState(self, segmenting: bool, improving: bool) -> None:
        parameters = self.widget._parameterNode
        self.ui.improveButton.text = _("Cancel fine-tuning") if improving else _("Start fine-tuning")
        self.ui.improveButton.enabled = improving or (not segmenting and bool(parameters and parameters.model))
        for widget in (self.ui.improveDataTabWidget, self.ui.newModelNameLineEdit, self.ui.improveEpochsSpinBox,
                       self.ui.improveOverwriteCheckBox):
            widget.enabled = not improving

    def scenePairs(self) -> list:
        """The listed pairs whose nodes are still in the scene (a deleted node drops its pair)."""
        scene = slicer.mrmlScene
        self._pairs = [ids for ids in self._pairs if all(scene.GetNodeByID(nodeId) for nodeId in ids)]
        return [tuple(scene.GetNodeByID(nodeId) for nodeId in ids) for ids in self._pairs]

    def _updatePairsTable(self) -> None:
        pairs = self.scenePairs()
        self.ui.pairsTableWidget.setRowCount(len(pairs))
        for row, nodes in enumerate(pairs):
            for column, node in enumerate(nodes):
                self.ui.pairsTableWidget.setItem(row, column, qt.QTableWidgetItem(node.GetName()))

    def onAddPair(self) -> None:
        parameters = self.widget._parameterNode
        if not (parameters and parameters.improveVolume and parameters.improveSegmentation):
            slicer.util.errorDisplay(_("Select a volume and its corrected segmentation first."))
            return
        self.addPair(parameters.improveVolume, parameters.improveSegmentation)

    def addPair(self, volumeNode, segmentationNode) -> bool:
        """Add a (volume, corrected segmentation) case; False when it is already listed. The CAD AI effect's "Add to
        Improve model" button calls this with the volume and segmentation being annotated."""
        if volumeNode is None or segmentationNode is None:
            raise ValueError("a fine-tuning case needs a volume and a segmentation")
        ids = (volumeNode.GetID(), segmentationNode.GetID())
        added = ids not in self._pairs
        if added:
            self._pairs.append(ids)
        self._updatePairsTable()
        return added

    def onRemovePair(self) -> None:
        rows = {index.row() for index in self.ui.pairsTableWidget.selectionModel().selectedRows()}
        self._pairs = [ids for row, ids in enumerate(self._pairs) if row not in rows]
        self._updatePairsTable()

    def onImproveButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()  # delivers onFinished(None, "cancelled"), which restores the panel
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start fine-tuning."), waitCursor=True):
            import CADExtension

            if not CADExtension.CADExtensionLogic().ensureDependencies(askConfirmation=True):
                self.widget._log(_("Dependencies are not installed; see the CAD Extension module."))
                return
            parameters = self.widget._parameterNode
            data = ({"pairs": self.scenePairs()} if self.ui.improveDataTabWidget.currentIndex == 0
                    else {"folder": self.ui.improveFolderButton.directory})
            self.ui.improveProgressBar.value = 0
            self.ui.curvesLabel.clear()
            self.widget._log(_("Fine-tuning {model} for {epochs} epochs on {device}…").format(
                model=parameters.model, epochs=parameters.improveEpochs, device=parameters.device))
            self.logic.run(parameters.model, newModelId=parameters.improveModelName.strip() or None,
                           epochs=parameters.improveEpochs, device=parameters.device,
                           overwrite=parameters.improveOverwrite, wait=False, onProgress=self._onProgress,
                           onLog=self.widget._log, onFinished=self._onFinished, **data)
            self.widget._updateRunningState()

    def _onProgress(self, percent: int) -> None:
        self.ui.improveProgressBar.value = percent

    def _onFinished(self, result, error) -> None:
        self.widget._updateRunningState()
        if error is None:
            self.ui.improveProgressBar.value = 100
            self.widget._log(_("New model {model} added to the model list ({folder}).").format(
                model=result.modelId, folder=result.folder))
            if result.curvesPath:
                pixmap = qt.QPixmap(str(result.curvesPath))
                self.ui.curvesLabel.setPixmap(pixmap.scaledToWidth(max(300, self.ui.curvesLabel.width),
                                                                   qt.Qt.SmoothTransformation))
                self.ui.curvesLabel.toolTip = str(result.curvesPath)
            self.widget.refreshModels()
            if self.widget._parameterNode:
                self.widget._parameterNode.model = result.modelId  # ready to try on the next case
        elif error == "cancelled":
            self.ui.improveProgressBar.value = 0
            self.widget._log(_("Fine-tuning cancelled; no model was added."))
        else:
            self.widget._log(error)
            slicer.util.errorDisplay(_("Fine-tuning failed: {error}").format(error=error))
