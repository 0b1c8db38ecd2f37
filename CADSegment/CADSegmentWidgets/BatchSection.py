"""The "Batch" section of the CADSegment panel: an input folder or the scene's volumes, a model, an output folder and
format, Run/Cancel, progress, the per-case log and the final summary; optionally the results loaded into the scene.

A controller over widgets of ``CADSegment.ui`` (``self.ui`` is the panel's ``childWidgetVariables``), owned by
``CADSegmentWidget`` like ``ImproveModelSection``; the work is ``CADSegmentLib.BatchLogic`` (``cad batch`` in a
background process), reached through the module logic's ``batch``. Its settings are panel state, not parameters:
folders and a cohort run are not part of a scene. Device and Fast come from the panel's settings above.
"""

import qt
import slicer
from slicer.i18n import tr as _

VOLUME_ID_ROLE = qt.Qt.UserRole


class BatchSection:
    def __init__(self, widget) -> None:
        self.widget = widget  # CADSegmentWidget: parameter node, model list and the panel's running state
        self.ui = widget.ui
        self._sceneInput = False  # what the current run reads: scene volumes are gone when the scene closes
        self._counts = [0, 0]  # ok, failed cases of the current run
        # A directory button starts at the application's working folder: never write a cohort there unasked.
        self._chosen = {"input": False, "output": False}
        self.ui.batchInputFolderButton.connect("directoryChanged(QString)", lambda _path: self._choose("input"))
        self.ui.batchOutputFolderButton.connect("directoryChanged(QString)", lambda _path: self._choose("output"))
        self.ui.batchRunButton.connect("clicked(bool)", self.onRunButton)
        self.ui.batchRefreshVolumesButton.connect("clicked(bool)", self.refreshVolumes)
        self.ui.batchInputTabWidget.connect("currentChanged(int)", self._onInputKindChanged)
        self.ui.batchFormatComboBox.connect("currentIndexChanged(int)", self._updateLoadOption)
        # Resume (skip what is done) and Overwrite (redo everything) exclude each other, as in the engine.
        self.ui.batchResumeCheckBox.connect("toggled(bool)", lambda on: on and self._uncheck("batchOverwriteCheckBox"))
        self.ui.batchOverwriteCheckBox.connect("toggled(bool)", lambda on: on and self._uncheck("batchResumeCheckBox"))
        self._updateFormats()

    @property
    def logic(self):
        return self.widget.logic.batch

    def _uncheck(self, name: str) -> None:
        getattr(self.ui, name).checked = False

    def _choose(self, which: str) -> None:
        self._chosen[which] = True

    def _folderInput(self) -> bool:
        return self.ui.batchInputTabWidget.currentIndex == 0

    def modelsChanged(self, models) -> None:
        """The same registry list as the panel's model selector (refreshed with it)."""
        from CADExtensionWidgets import populateModelSelector

        populateModelSelector(self.ui.batchModelSelector, models)

    def sceneClosed(self) -> None:
        """A run reading scene volumes has nothing to load its results onto any more: stop it (its exported copies
        are removed; a folder run goes on, writing to disk)."""
        if self.logic.isRunning() and self._sceneInput:
            self.logic.cancel()
        self.ui.batchVolumesListWidget.clear()

    def refreshVolumes(self) -> None:
        """List the scene's scalar volumes, checked by default and keeping the user's unchecks; labelmaps and the
        maps this module made (uncertainty) are not inputs."""
        from CADSegmentLib.SegmentationLogic import MAP_ATTRIBUTE

        listWidget = self.ui.batchVolumesListWidget
        unchecked = {listWidget.item(row).data(VOLUME_ID_ROLE) for row in range(listWidget.count)
                     if listWidget.item(row).checkState() != qt.Qt.Checked}
        listWidget.clear()
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute(MAP_ATTRIBUTE) or node.GetHideFromEditors():
                continue
            item = qt.QListWidgetItem(node.GetName())
            item.setData(VOLUME_ID_ROLE, node.GetID())
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked if node.GetID() in unchecked else qt.Qt.Checked)
            listWidget.addItem(item)

    def selectedVolumes(self) -> list:
        listWidget = self.ui.batchVolumesListWidget
        nodes = [slicer.mrmlScene.GetNodeByID(listWidget.item(row).data(VOLUME_ID_ROLE))
                 for row in range(listWidget.count) if listWidget.item(row).checkState() == qt.Qt.Checked]
        return [node for node in nodes if node is not None]  # a volume deleted since the list was made is skipped

    def _onInputKindChanged(self, index=None) -> None:
        if not self._folderInput():
            self.refreshVolumes()
        self._updateFormats()

    def _updateFormats(self) -> None:
        """dcm (DICOM SEG) only for an input folder: it references the source DICOM series, which scene volumes
        exported to NRRD no longer are. The current choice is kept when still offered."""
        from CADSegmentLib.BatchLogic import availableFormats

        combo = self.ui.batchFormatComboBox
        current = combo.currentText
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        formats = availableFormats(sceneInput=not self._folderInput())
        for name in formats:
            combo.addItem(name)
        combo.currentIndex = formats.index(current) if current in formats else 0
        combo.blockSignals(wasBlocked)
        self._updateLoadOption()

    def _updateLoadOption(self, index=None) -> None:
        from CADSegmentLib.BatchLogic import LOADABLE_FORMATS

        loadable = self.ui.batchFormatComboBox.currentText in LOADABLE_FORMATS
        self.ui.batchLoadResultsCheckBox.enabled = loadable and not self.logic.isRunning()
        if not loadable:
            self.ui.batchLoadResultsCheckBox.checked = False
        self.ui.batchLoadResultsCheckBox.toolTip = "" if loadable else _(
            "DICOM SEG results are not loaded here: load them with the DICOM module.")

    def updateRunningState(self, busy: bool, batching: bool) -> None:
        """``busy``: a segmentation or fine-tuning runs (one engine job at a time in this panel)."""
        self.ui.batchRunButton.text = _("Cancel batch") if batching else _("Run batch")
        self.ui.batchRunButton.enabled = batching or not busy
        for widget in (self.ui.batchInputTabWidget, self.ui.batchModelSelector, self.ui.batchOutputFolderButton,
                       self.ui.batchFormatComboBox, self.ui.batchWorkersSpinBox, self.ui.batchResumeCheckBox,
                       self.ui.batchOverwriteCheckBox, self.ui.batchUncertaintyCheckBox):
            widget.enabled = not batching
        self._updateLoadOption()

    def onRunButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()  # delivers onFinished(None, "cancelled"), which restores the panel
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the batch."), waitCursor=True):
            from CADExtensionWidgets import selectedModelId
            from CADSegmentLib import fastOption

            import CADExtension

            if not self._chosen["output"] or (self._folderInput() and not self._chosen["input"]):
                raise ValueError(_("Choose the input and output folders first."))
            if not CADExtension.CADExtensionLogic().ensureDependencies(askConfirmation=True):
                self.widget._log(_("Dependencies are not installed; see the CAD Extension module."))
                return
            parameters = self.widget._parameterNode
            modelId = selectedModelId(self.ui.batchModelSelector)
            self._sceneInput = not self._folderInput()
            inputs = ({"volumeNodes": self.selectedVolumes()} if self._sceneInput
                      else {"inputFolder": self.ui.batchInputFolderButton.directory})
            self.ui.batchLogTextEdit.clear()
            self.ui.batchSummaryLabel.text = ""
            self._counts = [0, 0]
            self.ui.batchProgressBar.value = 0
            self.logic.run(self.ui.batchOutputFolderButton.directory, model=modelId,
                           outputFormat=self.ui.batchFormatComboBox.currentText,
                           workers=self.ui.batchWorkersSpinBox.value, device=parameters.device,
                           resume=self.ui.batchResumeCheckBox.checked, force=self.ui.batchOverwriteCheckBox.checked,
                           uncertainty=self.ui.batchUncertaintyCheckBox.checked,
                           fast=parameters.fast and fastOption(self.widget._models.get(modelId))[0],
                           loadResults=self.ui.batchLoadResultsCheckBox.checked, wait=False,
                           onProgress=self._onProgress, onLog=self._log, onCase=self._onCase,
                           onFinished=self._onFinished, **inputs)
            self._log(_("Batch: {model} on {device}, output {folder}").format(
                model=modelId, device=parameters.device, folder=self.ui.batchOutputFolderButton.directory))
            self.widget._updateRunningState()

    def _log(self, line: str) -> None:
        self.ui.batchLogTextEdit.appendPlainText(line)

    def _onProgress(self, percent: int) -> None:
        self.ui.batchProgressBar.value = percent

    def _onCase(self, case) -> None:
        """The running count (the case line itself is in the log)."""
        self._counts[case.status == "failed"] += 1
        ok, failed = self._counts
        self.ui.batchSummaryLabel.text = _("{done} cases done: {ok} ok, {failed} failed").format(
            done=ok + failed, ok=ok, failed=failed)

    def _onFinished(self, result, error) -> None:
        self.widget._updateRunningState()
        if error is None:
            self.ui.batchProgressBar.value = 100
            text = _("{ok} ok, {failed} failed. Summary: {path}").format(
                ok=result.okCount, failed=result.failedCount, path=result.summaryPath or result.outputFolder)
            if result.segmentationNodes:
                text += "\n" + _("{count} segmentations loaded into the scene.").format(
                    count=len(result.segmentationNodes))
            self.ui.batchSummaryLabel.text = text
            self._log(text)
        elif error == "cancelled":
            self.ui.batchProgressBar.value = 0
            self.ui.batchSummaryLabel.text = _("Cancelled. The cases already done stay in the output folder; "
                                               "run again with Resume to skip them.")
        else:
            self._log(error)
            self.ui.batchSummaryLabel.text = error
            slicer.util.errorDisplay(_("Batch failed: {error}").format(error=error))
