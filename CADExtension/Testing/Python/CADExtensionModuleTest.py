"""In-Slicer tests of the CADExtension module, NOT run in CI (CI has no Slicer): the settings round trip through
QSettings, the registry lists (and verifies) the shipped model, and the model selector's parameter-node connector.

Run them with the module's Reload and Test button;
with ``slicer.testing.runUnitTest(['<repo>/CADExtension'], 'CADExtension')``,
through the module file's ``CADExtensionTest``, which delegates here;
or in an extension build tree with ``ctest -R py_CADExtensionModuleTest``.
"""

import os

import ctk
import qt
import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from CADExtension import DEVICE_SETTING, MODELS_FOLDER_SETTING, CADExtensionLogic


class CADExtensionModuleTest(ScriptedLoadableModuleTest):
    """Settings, registry and model selector in the running application (see the module docstring)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SettingsRoundTrip()
        self.test_RegistryListsShippedModel()
        self.test_ModelSelectorConnector()

    def test_SettingsRoundTrip(self):
        settings, logic = qt.QSettings(), CADExtensionLogic()
        saved = {key: settings.value(key) for key in (DEVICE_SETTING, MODELS_FOLDER_SETTING)}
        savedEnvironment = os.environ.get("CAD_MODELS")
        try:
            logic.setDefaultDevice("cpu")
            self.assertEqual(logic.defaultDevice(), "cpu")
            with self.assertRaises(ValueError):
                logic.setDefaultDevice("tpu")
            folder = os.path.join(slicer.app.temporaryPath, "CADExtensionTestModels")
            logic.setModelsFolder(folder)
            self.assertEqual((logic.modelsFolder(), os.environ.get("CAD_MODELS")), (folder, folder))
        finally:
            for key, value in saved.items():
                if value is None:
                    settings.remove(key)
                else:
                    settings.setValue(key, value)
            if savedEnvironment is None:
                os.environ.pop("CAD_MODELS", None)
            else:
                os.environ["CAD_MODELS"] = savedEnvironment

    def test_RegistryListsShippedModel(self):
        from CADExtensionLib.command import engineFolder

        if not os.path.isfile(os.path.join(engineFolder(), "cadcore", "models", "hippocampus-unet", "model.json")):
            self.skipTest("the hippocampus-unet model is not shipped in this build")
        models = {m.id: m for m in CADExtensionLogic().listModels(task="segmentation")}
        self.assertIn("hippocampus-unet", models)
        self.assertTrue(models["hippocampus-unet"].labels)
        self.assertTrue(CADExtensionLogic().verifyModel("hippocampus-unet"))

    def test_ModelSelectorConnector(self):
        from CADExtensionLib.model_summary import ModelSummary
        from CADExtensionWidgets import populateModelSelector
        from slicer.parameterNodeWrapper import parameterNodeWrapper

        @parameterNodeWrapper
        class _Parameters:
            model: str = ""

        comboBox = ctk.ctkComboBox()
        a, b = (ModelSummary(id=i, task="segmentation", path="", title=t) for i, t in (("a", "A"), ("b", "")))
        populateModelSelector(comboBox, [a, b])
        parameters = _Parameters(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
        tag = parameters.connectParametersToGui({"model": comboBox})
        self.assertEqual(comboBox.currentIndex, -1)  # the empty parameter was written to the GUI
        comboBox.currentIndex = 1
        self.assertEqual(parameters.model, "b")
        parameters.model = "a"
        self.assertEqual(comboBox.currentText, "A (a)")
        parameters.model = "missing"  # e.g. a scene saved with a model not installed here: shown, not dropped
        self.assertIn("missing", comboBox.currentText)
        self.assertEqual(parameters.model, "missing")
        populateModelSelector(comboBox, [b])  # a refresh keeps the selection
        self.assertEqual(parameters.model, "missing")
        parameters.disconnectGui(tag)
