"""The CAD AI Segment Editor effect: a click, a box or painted strokes become the selected segment, refined by more
clicks, written through the Segment Editor's own masking, overwrite mode and undo.

Layer 3 (Qt): the options frame and the view interaction only. A prompt is ``CADSegmentLib.PromptLogic`` (engine call,
geometry, the write); what needs no Qt (model order, default label, the click history, strokes into a labelmap) is
``CADSegmentLib.PromptTools``. Registered by ``CADSegment`` at ``startupCompleted`` (Slicer's
``ScriptedSegmentEditorEffect`` template); the per-click handling follows ``SegmentEditorLevelTracingEffect``.

The write goes through this effect's adaptor: ``saveStateForUndo()`` then ``modifySelectedSegmentByLabelmap(...,
ModificationModeSet)``, so the editable area, the intensity range and the overwrite mode apply and Ctrl+Z reverts one
prompt. The engine is the warm server (a remote one from the CAD Extension settings, else a local one started in the
background on activation); until it answers, prompts run through the command line.
"""

import logging
import os

import qt
import slicer
import vtk
from CADSegmentLib.PromptTools import (
    BACKGROUND,
    FOREGROUND,
    PromptHistory,
    defaultLabel,
    promptModels,
    strokesToLabelmap,
)
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect
from slicer.i18n import tr as _

MODES = ("click", "box", "scribble")
WAIT_CURSOR_AFTER_MS = 2000  # a quick prompt must not flash the cursor; a slow one must say it is working
STROKE_RADIUS_MM = 2.0


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """CAD AI: AI prompts (click, box, scribble) into the selected segment."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "CAD AI"
        scriptedEffect.title = _("CAD AI")
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.history = PromptHistory()
        self.models = []
        self.logic = None
        self.stroke = None  # (value, [world RAS points]) while the mouse paints
        self.uncertaintyNode = None
        self.suggestedClick = None
        self.waitCursor = False
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(50)
        self.pollTimer.connect("timeout()", self.onPoll)
        self.cursorTimer = qt.QTimer()
        self.cursorTimer.setSingleShot(True)
        self.cursorTimer.connect("timeout()", self.onSlowPrompt)
        self.engineTimer = qt.QTimer()
        self.engineTimer.setInterval(500)
        self.engineTimer.connect("timeout()", self.onEngineStatus)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return _("<html>Segment a structure with AI from prompts.<p>"
                 "<b>Click</b>: left-click inside the structure; Shift+left-click where it is not. Each click refines "
                 "the segment.<br><b>Box</b>: place a markups ROI around it and press Segment in box.<br>"
                 "<b>Scribble</b>: paint inside (drag) and outside (Shift+drag).<br>Esc cancels a running prompt.<p>"
                 "The result goes through the editable area, intensity range and overwrite settings below, and "
                 "Undo reverts each prompt.</html>")

    # --- options -----------------------------------------------------------------------------------------------

    def setupOptionsFrame(self):
        self.modelSelector = qt.QComboBox()
        self.modelSelector.toolTip = _("Interactive models first, then the generic model, then any segmentation "
                                       "model (run on the region of your prompts).")
        self.scriptedEffect.addLabeledOptionsWidget(_("Model:"), self.modelSelector)
        self.labelSelector = qt.QComboBox()
        self.labelSelector.toolTip = _("The model's structure to segment; by default the one named like the segment.")
        self.scriptedEffect.addLabeledOptionsWidget(_("Structure:"), self.labelSelector)

        modeLayout = qt.QHBoxLayout()
        self.modeButtons = {}
        for mode, text in zip(MODES, (_("Click"), _("Box"), _("Scribble"))):
            button = qt.QRadioButton(text)
            button.objectName = f"CADAIMode{mode.title()}"
            modeLayout.addWidget(button)
            self.modeButtons[mode] = button
            button.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.scriptedEffect.addLabeledOptionsWidget(_("Prompt:"), modeLayout)

        self.roiSelector = slicer.qMRMLNodeComboBox()
        self.roiSelector.nodeTypes = ["vtkMRMLMarkupsROINode"]
        self.roiSelector.noneEnabled = True
        self.roiSelector.addEnabled = True
        self.roiSelector.renameEnabled = True
        self.roiSelector.setMRMLScene(slicer.mrmlScene)
        self.roiSelector.toolTip = _("A box (markups ROI) around the structure.")
        self.boxButton = qt.QPushButton(_("Segment in box"))
        boxLayout = qt.QHBoxLayout()
        boxLayout.addWidget(self.roiSelector)
        boxLayout.addWidget(self.boxButton)
        self.scriptedEffect.addLabeledOptionsWidget(_("Box:"), boxLayout)
        self.boxButton.connect("clicked()", self.onSegmentInBox)

        self.refineCheckBox = qt.QCheckBox(_("Refine the selected segment"))
        self.refineCheckBox.toolTip = _("Send the segment as it is now, so the first prompt corrects it instead of "
                                        "starting over.")
        self.scriptedEffect.addOptionsWidget(self.refineCheckBox)
        self.refineCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)

        self.uncertaintyCheckBox = qt.QCheckBox(_("Show where it is unsure"))
        self.uncertaintyOpacitySlider = slicer.qMRMLSliderWidget()
        self.uncertaintyOpacitySlider.minimum, self.uncertaintyOpacitySlider.maximum = 0.0, 1.0
        self.uncertaintyOpacitySlider.singleStep = 0.05
        uncertaintyLayout = qt.QHBoxLayout()
        uncertaintyLayout.addWidget(self.uncertaintyCheckBox)
        uncertaintyLayout.addWidget(self.uncertaintyOpacitySlider)
        self.scriptedEffect.addLabeledOptionsWidget(_("Uncertainty:"), uncertaintyLayout)
        self.uncertaintyCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.uncertaintyOpacitySlider.connect("valueChanged(double)", self.updateMRMLFromGUI)

        self.suggestionButton = qt.QPushButton(_("Go to the suggested next click"))
        self.suggestionButton.enabled = False
        self.resetButton = qt.QPushButton(_("Start over"))
        self.resetButton.toolTip = _("Forget this segment's clicks: the next click starts a new prompt.")
        self.improveButton = qt.QPushButton(_("Add to Improve model"))
        self.improveButton.toolTip = _("Add this volume and its corrected segmentation to CAD Segment's Improve model "
                                       "cases.")
        buttons = qt.QHBoxLayout()
        for button in (self.suggestionButton, self.resetButton, self.improveButton):
            buttons.addWidget(button)
        self.scriptedEffect.addOptionsWidget(buttons)
        self.suggestionButton.connect("clicked()", self.onGoToSuggestion)
        self.resetButton.connect("clicked()", self.onReset)
        self.improveButton.connect("clicked()", self.onAddToImproveModel)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self.engineLabel = qt.QLabel()
        self.engineLabel.toolTip = _("Where prompts run: the warm engine server (local or remote, see the CAD "
                                     "Extension settings) or, while it starts, the command line.")
        self.scriptedEffect.addLabeledOptionsWidget(_("Engine:"), self.engineLabel)
        self.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.labelSelector.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Model", "")
        self.scriptedEffect.setParameterDefault("Label", 0)
        self.scriptedEffect.setParameterDefault("PromptMode", "click")
        self.scriptedEffect.setParameterDefault("Refine", 0)
        self.scriptedEffect.setParameterDefault("Uncertainty", 0)
        self.scriptedEffect.setParameterDefault("UncertaintyOpacity", 0.5)

    def updateGUIFromMRML(self):
        widgets = [self.modelSelector, self.labelSelector, self.refineCheckBox, self.uncertaintyCheckBox,
                   self.uncertaintyOpacitySlider, *self.modeButtons.values()]
        blocked = [widget.blockSignals(True) for widget in widgets]
        modelIndex = self.modelSelector.findData(self.scriptedEffect.parameter("Model"))
        if modelIndex >= 0:
            self.modelSelector.currentIndex = modelIndex
        self._fillLabels()
        labelIndex = self.labelSelector.findData(self.scriptedEffect.integerParameter("Label"))
        if labelIndex >= 0:
            self.labelSelector.currentIndex = labelIndex
        mode = self.scriptedEffect.parameter("PromptMode")
        self.modeButtons.get(mode, self.modeButtons["click"]).checked = True
        self.refineCheckBox.checked = self.scriptedEffect.integerParameter("Refine") != 0
        self.uncertaintyCheckBox.checked = self.scriptedEffect.integerParameter("Uncertainty") != 0
        self.uncertaintyOpacitySlider.value = self.scriptedEffect.doubleParameter("UncertaintyOpacity")
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        self.uncertaintyOpacitySlider.enabled = self.uncertaintyCheckBox.checked
        self.boxButton.enabled = mode == "box"

    def updateMRMLFromGUI(self, *unused):
        self.scriptedEffect.setParameter("Model", self.modelSelector.currentData or "")
        self.scriptedEffect.setParameter("Label", int(self.labelSelector.currentData or 0))
        mode = next((m for m, button in self.modeButtons.items() if button.checked), "click")
        self.scriptedEffect.setParameter("PromptMode", mode)
        self.scriptedEffect.setParameter("Refine", int(self.refineCheckBox.checked))
        self.scriptedEffect.setParameter("Uncertainty", int(self.uncertaintyCheckBox.checked))
        self.scriptedEffect.setParameter("UncertaintyOpacity", self.uncertaintyOpacitySlider.value)
        self._showUncertainty()

    def activate(self):
        self._refreshModels()
        from CADSegmentLib.PromptEngine import SERVER_TOKEN_FILE_SETTING, SERVER_URL_SETTING, sharedEngine

        settings = qt.QSettings()
        engine = sharedEngine()
        engine.configure(str(settings.value(SERVER_URL_SETTING, "") or ""),
                         str(settings.value(SERVER_TOKEN_FILE_SETTING, "") or ""))
        engine.warmUp()  # in a background thread: prompts use the command line until the server answers
        self.engineTimer.start()

    def deactivate(self):
        self.stroke = None
        self.engineTimer.stop()

    def onEngineStatus(self):
        from CADSegmentLib.PromptEngine import sharedEngine

        self.engineLabel.text = sharedEngine().statusText()
        if sharedEngine().settled():
            self.engineTimer.stop()

    def cleanup(self):
        self.pollTimer.stop()
        self.cursorTimer.stop()
        self.engineTimer.stop()
        self.pollTimer.disconnect("timeout()", self.onPoll)
        self.cursorTimer.disconnect("timeout()", self.onSlowPrompt)
        self.engineTimer.disconnect("timeout()", self.onEngineStatus)

    def sourceVolumeNodeChanged(self):
        self.history.clear()

    def onModelChanged(self, index):
        self._fillLabels()
        self.updateMRMLFromGUI()

    def _refreshModels(self):
        import CADExtension

        try:
            self.models = promptModels(CADExtension.CADExtensionLogic().listModels(task="segmentation"))
        except Exception as exc:  # a broken models folder must not break the Segment Editor
            logging.error("CAD AI: cannot list models: %s", exc)
            self.models = []
        wasBlocked = self.modelSelector.blockSignals(True)
        self.modelSelector.clear()
        for model in self.models:
            suffix = _(" (interactive)") if model.guided else ""
            self.modelSelector.addItem(model.displayName + suffix, model.id)
        self.modelSelector.blockSignals(wasBlocked)
        self.updateGUIFromMRML()

    def _modelId(self):
        """The model chosen in the selector (the parameter follows it, but not yet inside its change signal)."""
        return self.modelSelector.currentData or self.scriptedEffect.parameter("Model")

    def _selectedModel(self):
        return next((m for m in self.models if m.id == self._modelId()), None)

    def _fillLabels(self):
        model = self._selectedModel()
        wasBlocked = self.labelSelector.blockSignals(True)
        self.labelSelector.clear()
        if model is not None:
            for value in sorted((v for v in model.labels if v.isdigit() and int(v) > 0), key=int):
                self.labelSelector.addItem(model.labels[value], int(value))
            segment = self._selectedSegment()
            label = defaultLabel(model, segment.GetName() if segment else "")
            index = self.labelSelector.findData(label) if label is not None else -1
            if index >= 0:
                self.labelSelector.currentIndex = index
        self.labelSelector.blockSignals(wasBlocked)

    # --- interaction -------------------------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if eventId == vtk.vtkCommand.KeyPressEvent and callerInteractor.GetKeySym() == "Escape" \
                and self.logic is not None and self.logic.isRunning():
            self.logic.cancel()  # the prompt writes nothing; its onFinished reports "cancelled"
            return True
        if viewWidget.className() != "qMRMLSliceWidget" or callerInteractor.GetControlKey() \
                or callerInteractor.GetAltKey():
            return False
        mode = self.scriptedEffect.parameter("PromptMode")
        include = not callerInteractor.GetShiftKey()
        if mode == "click" and eventId == vtk.vtkCommand.LeftButtonPressEvent:
            ras = self.scriptedEffect.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
            self.onClick([ras.x(), ras.y(), ras.z()], include)
            return True
        if mode == "scribble":
            if eventId == vtk.vtkCommand.LeftButtonPressEvent:
                self.stroke = (FOREGROUND if include else BACKGROUND, [])
            if self.stroke is not None and eventId in (vtk.vtkCommand.LeftButtonPressEvent,
                                                       vtk.vtkCommand.MouseMoveEvent):
                ras = self.scriptedEffect.xyToRas(callerInteractor.GetEventPosition(), viewWidget)
                self.stroke[1].append([ras.x(), ras.y(), ras.z()])
                return True
            if self.stroke is not None and eventId == vtk.vtkCommand.LeftButtonReleaseEvent:
                stroke, self.stroke = self.stroke, None
                self.onStroke(stroke)
                return True
        return False

    def onClick(self, ras, include):
        history = self._history()
        if history is None:
            return
        history.add(ras, include)
        if not history.canPrompt:
            history.undoLast(include)
            self._setStatus(_("Start with a click inside the structure (without Shift)."))
            return
        scribble = strokesToLabelmap(self.scriptedEffect.parameterSetNode().GetSourceVolumeNode(), history.strokes,
                                     STROKE_RADIUS_MM) if history.strokes else None
        self._prompt(scribble=scribble, undo=lambda: history.undoLast(include))

    def onStroke(self, stroke):
        volumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        history = self._history()
        if history is None or volumeNode is None or not stroke[1]:
            return
        history.addStroke(*stroke)
        if not history.canPrompt:
            history.undoLastStroke()
            self._setStatus(_("Paint inside the structure first; Shift+drag marks what is not."))
            return
        scribble = strokesToLabelmap(volumeNode, history.strokes, STROKE_RADIUS_MM)
        self._prompt(scribble=scribble, undo=history.undoLastStroke)

    def onSegmentInBox(self):
        roiNode = self.roiSelector.currentNode()
        if roiNode is None:
            self._setStatus(_("Select or place a box (markups ROI) first."))
            return
        self._prompt(roi=roiNode)

    def onReset(self):
        self.history.clear()
        self._setStatus(_("Prompts cleared: the next click starts a new segment."))

    def onGoToSuggestion(self):
        if self.suggestedClick:
            slicer.modules.markups.logic().JumpSlicesToLocation(*self.suggestedClick, True)

    def onAddToImproveModel(self):
        parameters = self.scriptedEffect.parameterSetNode()
        widget = slicer.modules.cadsegment.widgetRepresentation().self()
        added = widget.improveSection.addPair(parameters.GetSourceVolumeNode(), parameters.GetSegmentationNode())
        self._setStatus(_("Added to CAD Segment's Improve model cases.") if added else
                        _("This volume and segmentation are already an Improve model case."))

    # --- running a prompt --------------------------------------------------------------------------------------

    def _selectedSegment(self):
        parameters = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameters.GetSegmentationNode() if parameters else None
        segmentId = parameters.GetSelectedSegmentID() if parameters else None
        return segmentationNode.GetSegmentation().GetSegment(segmentId) if segmentationNode and segmentId else None

    def _history(self):
        parameters = self.scriptedEffect.parameterSetNode()
        volumeNode, segmentationNode = parameters.GetSourceVolumeNode(), parameters.GetSegmentationNode()
        segmentId = parameters.GetSelectedSegmentID()
        if volumeNode is None or segmentationNode is None or not segmentId:
            self._setStatus(_("Select a source volume and a segment first."))
            return None
        return self.history.forTarget((volumeNode.GetID(), segmentationNode.GetID(), segmentId, self._modelId()))

    def _prompt(self, roi=None, scribble=None, undo=None):
        from CADSegmentLib.PromptEngine import sharedEngine

        if self.logic is not None and self.logic.isRunning():
            if undo:
                undo()
            self._setStatus(_("Still working on the previous prompt."))
            return
        model = self._selectedModel()
        label = int(self.labelSelector.currentData or 0)
        history = self._history()
        if model is None or not label or history is None:
            if undo:
                undo()
            self._setStatus(_("Choose a model and a structure first.") if history is not None else "")
            return
        if self.scriptedEffect.confirmCurrentSegmentVisible() == 0:  # NotConfirmed: a hidden segment, user said no
            if undo:
                undo()
            return
        parameters = self.scriptedEffect.parameterSetNode()
        self.logic = sharedEngine().promptLogic(writer=self._write)
        self._undo = undo
        self._setStatus(_("Segmenting…"))
        self.cursorTimer.start(WAIT_CURSOR_AFTER_MS)
        self.pollTimer.start()
        try:
            self.logic.run(parameters.GetSourceVolumeNode(), parameters.GetSegmentationNode(),
                           parameters.GetSelectedSegmentID(), model=model.id, label=label,
                           positivePoints=list(history.positive), negativePoints=list(history.negative), roi=roi,
                           scribble=scribble, refine=history.answered or self.refineCheckBox.checked,
                           uncertainty=self.uncertaintyCheckBox.checked, segmentEditorNode=parameters, wait=False,
                           onFinished=self._onFinished)
        except Exception as exc:
            self._onFinished(None, str(exc))

    def _write(self, segmentationNode, segmentId, modifierLabelmap):
        """PromptLogic's write step, through the Segment Editor's own logic (masking, overwrite, one undo step)."""
        self.scriptedEffect.saveStateForUndo()
        self.scriptedEffect.modifySelectedSegmentByLabelmap(
            modifierLabelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)

    def onPoll(self):
        if self.logic is not None:
            self.logic.processEvents()

    def onSlowPrompt(self):
        if self.logic is not None and self.logic.isRunning() and not self.waitCursor:
            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
            self.waitCursor = True

    def _onFinished(self, result, error):
        self.pollTimer.stop()
        self.cursorTimer.stop()
        if self.waitCursor:
            qt.QApplication.restoreOverrideCursor()
            self.waitCursor = False
        if error:
            if self._undo:
                self._undo()
            self._setStatus(error)
            return
        self.history.answered = True
        report = getattr(self.logic, "lastReport", None) or {}
        self.suggestedClick = report.get("suggested_click")
        self.suggestionButton.enabled = bool(self.suggestedClick)
        self.uncertaintyNode = getattr(self.logic, "lastUncertaintyNode", None)
        self._showUncertainty()
        seconds = (report.get("timings") or {}).get("total_s")
        self._setStatus(_("Done in {seconds} s. Click again to correct; Undo reverts this prompt.").format(
            seconds=f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "?"))

    def _showUncertainty(self):
        node = self.uncertaintyNode
        if node is None or slicer.mrmlScene.GetNodeByID(node.GetID()) is None:
            return
        shown = self.scriptedEffect.integerParameter("Uncertainty") != 0
        opacity = self.scriptedEffect.doubleParameter("UncertaintyOpacity") if shown else 0.0
        slicer.util.setSliceViewerLayers(foreground=node if shown else None, foregroundOpacity=opacity)

    def _setStatus(self, message):
        self.statusLabel.text = message or ""
