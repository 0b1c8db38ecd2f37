"""In-Slicer tests of the CADSegment module, NOT run in CI (CI has no Slicer): real inference on the repository's
sample case (segment names, Dice, a second run adds), cancel leaves nothing, a short "Improve model" run, and a
batch smoke run (``cad batch`` on a scene volume, results loaded back).

They need the repository's sample_data folder (three levels up from this file; not in the packaged extension) and
the shipped hippocampus-unet model, and skip with the reason without them.

Run them with the module's Reload and Test button;
with ``slicer.testing.runUnitTest(['<repo>/CADSegment'], 'CADSegment')``,
through the module file's ``CADSegmentTest``, which delegates here;
or in an extension build tree with ``ctest -R py_CADSegmentModuleTest``.
"""

import hashlib
import json
import os
import time

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from CADSegment import CADSegmentLogic

# <repo>/<Module>/Testing/Python/this file -> <repo>/sample_data/hippocampus (absent from the packaged extension)
SAMPLE_FOLDER = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                              "sample_data", "hippocampus"))
SAMPLE_SHA256 = {
    "imagesTr/hippocampus_015.nii.gz": "f9ee0fe118531cc2230181d86a6cf440717f93882c47d86bb1462720187ebd41",
    "labelsTr/hippocampus_015.nii.gz": "da6dfe452a1a0367a99abb30f82f2b19c4b666011430819e71a5930a25729bd4",
}


class CADSegmentModuleTest(ScriptedLoadableModuleTest):
    """Segmentation, cancel and fine-tuning on the sample case (see the module docstring)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSampleCase()
        self.setUp()
        self.test_CancelLeavesNothing()
        self.setUp()
        self.test_ImproveModel()
        self.setUp()
        self.test_BatchSceneVolume()

    def _loadSample(self):
        from CADExtensionLib.command import engineFolder

        import CADExtension

        if not os.path.isfile(os.path.join(engineFolder(), "cadcore", "models", "hippocampus-unet", "model.json")):
            self.skipTest("the hippocampus-unet model is not shipped in this build")
        folder = SAMPLE_FOLDER
        paths = {name: os.path.join(folder, name) for name in SAMPLE_SHA256}
        if not all(os.path.isfile(path) for path in paths.values()):
            self.skipTest(f"sample data not found under {folder} (run from a repository checkout)")
        for name, path in paths.items():
            with open(path, "rb") as handle:
                self.assertEqual(hashlib.sha256(handle.read()).hexdigest(), SAMPLE_SHA256[name], path)
        self.assertTrue(CADExtension.CADExtensionLogic().ensureDependencies(askConfirmation=False))
        volume = slicer.util.loadVolume(paths["imagesTr/hippocampus_015.nii.gz"])
        label = slicer.util.loadLabelVolume(paths["labelsTr/hippocampus_015.nii.gz"])
        return volume, label

    def test_SegmentSampleCase(self):
        """Segment names from the model card, Dice >= 0.85 per label, a second run adds instead of overwriting."""
        from CADExtensionLib.command import engineFolder

        volume, label = self._loadSample()  # skips without the sample data or the shipped model
        cardPath = os.path.join(engineFolder(), "cadcore", "models", "hippocampus-unet", "model.json")
        with open(cardPath, encoding="utf-8") as handle:
            labels = [entry for entry in json.load(handle)["labels"] if int(entry["value"]) != 0]
        logic = CADSegmentLogic()
        node = logic.run(volume, model="hippocampus-unet", device="cpu", wait=True)
        segmentation = node.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(names, [entry["name"] for entry in labels])
        truth = slicer.util.arrayFromVolume(label)
        for index, entry in enumerate(labels):
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), volume) > 0
            expected = truth == int(entry["value"])
            dice = 2.0 * (mask & expected).sum() / max(1, mask.sum() + expected.sum())
            self.assertGreaterEqual(dice, 0.85, f"{entry['name']}: Dice {dice:.3f}")
        logic.run(volume, model="hippocampus-unet", device="cpu", outputSegmentationNode=node, wait=True)
        newNames = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertEqual(newNames[:len(names)], names)  # the first run's segments are untouched
        self.assertEqual(len(set(newNames)), 2 * len(names))  # the second run's got unique names

    def test_CancelLeavesNothing(self):
        """The widget's path: non-blocking run pumped by processEvents, cancelled: no node is added."""
        volume, _label = self._loadSample()
        before = slicer.mrmlScene.GetNumberOfNodes()
        finished = []
        logic = CADSegmentLogic()
        logic.run(volume, model="hippocampus-unet", device="cpu", wait=False,
                  onFinished=lambda node, error: finished.append((node, error)))
        deadline = time.monotonic() + 1.0  # the engine is still importing torch after a second
        while time.monotonic() < deadline:
            logic.processEvents()
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertTrue(logic.isRunning())
        self.assertTrue(logic.cancel())  # kills the engine's process tree and delivers onFinished
        self.assertEqual(finished, [(None, "cancelled")])
        self.assertFalse(logic.isRunning())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_ImproveModel(self):
        """The panel's Improve model path: the shipped model's segmentations of two copies of the sample case as the
        corrected pairs, 2 epochs on CPU into a temporary models folder: the new model is listed with the parent's
        labels and has its curves; a segment renamed to no label of the model is refused before anything runs."""
        import shutil

        from CADExtensionLib.models import ModelManagerLogic
        from CADSegmentLib import ImproveModelLogic

        pairs = []
        for _copy in range(2):
            volume, _label = self._loadSample()
            pairs.append((volume, CADSegmentLogic().run(volume, model="hippocampus-unet", device="cpu")))
        folder = os.path.join(slicer.app.temporaryPath, f"CADSegmentTestModels-{os.getpid()}")
        try:
            logic = ImproveModelLogic(modelsFolder=folder)
            result = logic.run("hippocampus-unet", pairs=pairs, newModelId="hippocampus-test", epochs=2, device="cpu")
            listed = {entry.id: entry for entry in ModelManagerLogic(modelsFolder=folder).listModels()}
            self.assertEqual(listed["hippocampus-test"].labels, listed["hippocampus-unet"].labels)
            self.assertTrue(result.curvesPath is not None and result.curvesPath.is_file())
            pairs[1][1].GetSegmentation().GetNthSegment(0).SetName("not a label")
            with self.assertRaisesRegex(ValueError, "match no label of model 'hippocampus-unet'"):
                logic.run("hippocampus-unet", pairs=pairs, newModelId="hippocampus-test-2", epochs=1)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def test_BatchSceneVolume(self):
        """The Batch section's path with a scene volume: exported under its name, ``cad batch`` in the background
        (pumped as the panel's timer does), summary.csv written, the result loaded on the volume's grid with the
        card's segment names and Dice >= 0.85; the exported copy is gone."""
        import shutil
        import tempfile

        from CADExtensionLib.command import engineFolder

        if not os.path.isfile(os.path.join(engineFolder(), "cadcore", "cli", "batch.py")):
            self.skipTest("this engine has no `cad batch` (issue 20's engine part is not in this build)")
        volume, label = self._loadSample()
        output = tempfile.mkdtemp(prefix="CADSegmentBatchTest-")
        try:
            logic = CADSegmentLogic()
            finished, cases = [], []
            logic.batch.run(output, model="hippocampus-unet", volumeNodes=[volume], device="cpu", loadResults=True,
                            wait=False, onCase=cases.append, onFinished=lambda result, error: finished.append(
                                (result, error)))
            deadline = time.monotonic() + 600
            while not finished and time.monotonic() < deadline:
                logic.processEvents()
                slicer.app.processEvents()
                time.sleep(0.05)
            self.assertEqual(len(finished), 1, "the batch did not finish in 10 minutes")
            result, error = finished[0]
            self.assertIsNone(error)
            self.assertEqual((result.okCount, result.failedCount), (1, 0))
            self.assertEqual([(case.id, case.status) for case in cases], [(volume.GetName(), "ok")])
            self.assertTrue(os.path.isfile(os.path.join(output, "summary.csv")))
            self.assertTrue(os.path.isfile(os.path.join(output, f"{volume.GetName()}.nii.gz")))
            node = result.segmentationNodes[0]
            segmentation = node.GetSegmentation()
            truth = slicer.util.arrayFromVolume(label)
            for index in range(segmentation.GetNumberOfSegments()):
                mask = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentation.GetNthSegmentID(index), volume)
                expected = truth == index + 1  # hippocampus-unet: anterior = 1, posterior = 2
                dice = 2.0 * ((mask > 0) & expected).sum() / max(1, (mask > 0).sum() + expected.sum())
                self.assertGreaterEqual(dice, 0.85, f"{segmentation.GetNthSegment(index).GetName()}: Dice {dice:.3f}")
            self.assertFalse(logic.batch.isRunning())
        finally:
            shutil.rmtree(output, ignore_errors=True)
