"""CADExtension: the hidden core module of the CADExtension extension.

It owns what CADSegment and CADClassify share: the model manager (list, import, verify, remove), the settings (default
device, models folder) and the dependency installer. Their panels' model selector (``populateModelSelector`` and the
``ModelSelectorConnector`` parameter-node connector) is in ``CADExtensionWidgets`` beside this file.

Layer 3 (Slicer module): imports qt/ctk/slicer; torch, MONAI and cadcore never (the engine runs in a subprocess).
The real work is in ``CADExtensionLib`` (imported inside functions, so this file loads even when a Lib is missing).
"""

import logging
import os

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_SETTING = "CADExtension/device"
MODELS_FOLDER_SETTING = "CADExtension/modelsFolder"
SERVER_URL_SETTING = "CADExtension/ServerURL"  # the same keys as CADExtensionLib.engine_server (the effect reads them)
SERVER_TOKEN_FILE_SETTING = "CADExtension/ServerTokenFile"


class CADExtension(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CAD Extension")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["The CADExtension authors"]
        self.parent.helpText = _(
            "Model manager, settings and dependency installer shared by CAD Segment and CAD Classify. "
            'Open it with the "Manage models" button of those modules.')
        self.parent.acknowledgementText = _("Built on 3D Slicer, MONAI and PyTorch.")
        self.parent.hidden = True  # a helper module: reached from CADSegment/CADClassify, not the module list
        slicer.app.connect("startupCompleted()", lambda: CADExtensionLogic().applySettings())


class CADExtensionWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CADExtension.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CADExtensionLogic()

        self.ui.importFolderButton.connect("clicked(bool)", lambda: self.onImport("folder"))
        self.ui.importZipButton.connect("clicked(bool)", lambda: self.onImport("zip"))
        self.ui.importBundleButton.connect("clicked(bool)", lambda: self.onImport("bundle"))
        self.ui.verifyButton.connect("clicked(bool)", self.onVerify)
        self.ui.removeButton.connect("clicked(bool)", self.onRemove)
        self.ui.refreshButton.connect("clicked(bool)", self.refreshModels)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.deviceComboBox.currentIndex = max(0, self.ui.deviceComboBox.findText(self.logic.defaultDevice()))
        self.ui.deviceComboBox.connect("currentTextChanged(QString)", self.logic.setDefaultDevice)
        self.ui.modelsFolderButton.directory = self.logic.modelsFolder()
        self.ui.modelsFolderButton.connect("directoryChanged(QString)", self.onModelsFolderChanged)
        url, tokenFile = self.logic.serverSettings()
        self.ui.serverUrlLineEdit.text = url
        self.ui.serverTokenFileLineEdit.text = tokenFile
        self.ui.serverUrlLineEdit.connect("editingFinished()", self.onServerSettingsChanged)
        self.ui.serverTokenFileLineEdit.connect("editingFinished()", self.onServerSettingsChanged)

    def enter(self):
        self.refreshModels()
        self.updateDependencyStatus()

    def exit(self):
        pass

    def cleanup(self):
        pass

    def _selectedModelId(self):
        row = self.ui.modelsTableWidget.currentRow()
        item = self.ui.modelsTableWidget.item(row, 0) if row >= 0 else None
        return item.text() if item else None

    def refreshModels(self):
        from CADExtensionLib.model_summary import modelDescription

        with slicer.util.tryWithErrorDisplay(_("Failed to list the models."), waitCursor=True):
            models = self.logic.listModels()
            table = self.ui.modelsTableWidget
            table.setRowCount(len(models))
            for row, info in enumerate(models):
                location = _("shipped") if info.shipped else info.path
                kind = _("MONAI bundle (segmentation)") if info.bundle else info.task
                for column, text in enumerate((info.id, kind, info.modality, info.version, location)):
                    item = qt.QTableWidgetItem(text)
                    item.setToolTip(modelDescription(info))
                    table.setItem(row, column, item)
            table.resizeColumnsToContents()
            self.ui.modelStatusLabel.text = _("{count} models, user folder: {folder}").format(
                count=len(models), folder=self.logic.modelsFolder())

    def onImport(self, kind):
        if kind == "zip":
            path = qt.QFileDialog.getOpenFileName(self.parent, _("Import model archive"), "", _("Zip archives (*.zip)"))
        else:
            path = qt.QFileDialog.getExistingDirectory(self.parent, _("Import model folder") if kind == "folder"
                                                       else _("Import MONAI bundle folder"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to import the model."), waitCursor=True):
            modelId = self.logic.importModel(path).id
            self.ui.modelStatusLabel.text = _("Imported {model}.").format(model=modelId)
        self.refreshModels()

    def onVerify(self):
        modelId = self._selectedModelId()
        if not modelId:
            return
        with slicer.util.tryWithErrorDisplay(_("Model verification failed."), waitCursor=True):
            result = self.logic.verifyModel(modelId)
            if result is False:
                raise RuntimeError(_("{model} did not pass verification.").format(model=modelId))
            self.ui.modelStatusLabel.text = _("{model}: files match their recorded sha256.").format(model=modelId)

    def onRemove(self):
        modelId = self._selectedModelId()
        if not modelId or not slicer.util.confirmOkCancelDisplay(
                _("Remove model {model} from the user models folder?").format(model=modelId)):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to remove the model."), waitCursor=True):
            self.logic.removeModel(modelId)
        self.refreshModels()

    def onModelsFolderChanged(self, folder):
        self.logic.setModelsFolder(folder)
        self.refreshModels()

    def onServerSettingsChanged(self):
        with slicer.util.tryWithErrorDisplay(_("Invalid engine server settings."), waitCursor=False):
            self.logic.setServerSettings(self.ui.serverUrlLineEdit.text, self.ui.serverTokenFileLineEdit.text)

    def updateDependencyStatus(self):
        try:
            missing = self.logic.missingPackages()
        except Exception as exc:  # the dependency logic itself is unavailable: say so, do not break the panel
            self.ui.dependencyStatusLabel.text = _("Cannot check dependencies: {error}").format(error=exc)
            return
        self.ui.dependencyStatusLabel.text = (_("Missing: {packages}").format(packages=", ".join(missing)) if missing
                                              else _("All dependencies are installed."))

    def onInstallDependencies(self):
        with slicer.util.tryWithErrorDisplay(_("Failed to install the dependencies."), waitCursor=True):
            self.logic.ensureDependencies(askConfirmation=True)
        self.updateDependencyStatus()


class CADExtensionLogic(ScriptedLoadableModuleLogic):
    """Settings, model registry and dependencies, usable without the GUI::

        logic = CADExtensionLogic()
        [m.id for m in logic.listModels(task="segmentation")]
        logic.ensureDependencies(askConfirmation=False)
    """

    def defaultDevice(self) -> str:
        device = str(qt.QSettings().value(DEVICE_SETTING, "auto"))
        return device if device in DEVICES else "auto"

    def setDefaultDevice(self, device: str) -> None:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r} (use one of {', '.join(DEVICES)})")
        qt.QSettings().setValue(DEVICE_SETTING, device)

    def modelsFolder(self) -> str:
        folder = str(qt.QSettings().value(MODELS_FOLDER_SETTING, "") or "")
        return folder or os.environ.get("CAD_MODELS") or os.path.join(os.path.expanduser("~"), ".cadextension",
                                                                      "models")

    def setModelsFolder(self, folder: str) -> None:
        qt.QSettings().setValue(MODELS_FOLDER_SETTING, folder)
        self.applySettings()

    def serverSettings(self) -> tuple:
        """(remote server URL, its token file); both empty: the CAD AI effect starts a local server."""
        settings = qt.QSettings()
        return (str(settings.value(SERVER_URL_SETTING, "") or ""),
                str(settings.value(SERVER_TOKEN_FILE_SETTING, "") or ""))

    def setServerSettings(self, url: str, tokenFile: str) -> None:
        """A remote ``cad serve`` for the CAD AI effect (empty URL: local). The URL must be http(s); the token stays
        in its file (settings are plain text), so only the file's path is stored."""
        url, tokenFile = url.strip(), tokenFile.strip()
        if url and not url.startswith(("http://", "https://")):
            raise ValueError(f"the engine server URL must start with http:// or https://, got {url!r}")
        settings = qt.QSettings()
        settings.setValue(SERVER_URL_SETTING, url)
        settings.setValue(SERVER_TOKEN_FILE_SETTING, tokenFile)

    def applySettings(self) -> None:
        """Export the models folder as ``CAD_MODELS``: the registry and every engine process read it from there."""
        folder = str(qt.QSettings().value(MODELS_FOLDER_SETTING, "") or "")
        if folder:
            os.environ["CAD_MODELS"] = folder

    def _models(self):
        from CADExtensionLib.models import ModelManagerLogic

        self.applySettings()
        return ModelManagerLogic(modelsFolder=self.modelsFolder())

    def listModels(self, task: str | None = None, guided: bool | None = None) -> list:
        """Every model (``CADExtensionLib.ModelSummary`` objects); with ``task``, only the models the engine can run
        for it; ``guided=False`` leaves out guided (interactive) networks, which need clicks (automatic panels)."""
        return [m for m in self._models().listModels()
                if (task is None or m.task == task) and (guided is None or m.guided == guided)]

    def importModel(self, path: str):
        """Install a package folder, its .zip or a MONAI bundle folder; returns the new model's ``ModelSummary``."""
        return self._models().importModel(path)

    def removeModel(self, modelId: str):
        return self._models().removeModel(modelId)

    def verifyModel(self, modelId: str):
        return self._models().verifyModel(modelId)

    def missingPackages(self) -> list:
        from CADExtensionLib.dependencies import DependencyLogic

        return list(DependencyLogic().missingPackages())

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install what is missing (torch through PyTorchUtils, the rest with pip); True when nothing is missing.

        A refused confirmation or a failed install raises (the panels show it with ``tryWithErrorDisplay``). When a
        package that this session had already imported was upgraded, the user is asked to restart Slicer.
        """
        from CADExtensionLib.dependencies import DependencyLogic

        dependencies = DependencyLogic()
        missing = dependencies.missingPackages()
        if not missing:
            return True
        logging.info("CADExtension: installing %s", ", ".join(missing))
        install = getattr(dependencies, "installDependencies", None) or dependencies.installMissing
        installed = install(askConfirmation=askConfirmation) or []
        restartNeeded = getattr(dependencies, "restartNeeded", None)
        if installed and restartNeeded is not None and restartNeeded(installed):
            message = _("Python packages already in use were updated. Restart 3D Slicer before running a model.")
            logging.warning("CADExtension: %s", message)
            if askConfirmation:
                slicer.util.infoDisplay(message)
            return False
        return not dependencies.missingPackages()


class CADExtensionTest(ScriptedLoadableModuleTest):
    """What Slicer runs as this module's self-test: Reload and Test and ``slicer.selfTests["CADExtension"]`` look for
    ``CADExtensionTest`` in the module file. The tests are in ``Testing/Python/CADExtensionModuleTest.py``;
    not run in CI."""

    def runTest(self, **kwargs) -> None:
        from CADExtensionLib.selftests import runModuleTest

        runModuleTest(__file__, "CADExtensionModuleTest", getattr(self, "messageDelay", None), **kwargs)
