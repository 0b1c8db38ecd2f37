"""In-Slicer tests of the CADClassify module, NOT run in CI (CI has no Slicer). They check the wiring (a segment, a
point and an ROI → engine → probability table, heatmap grid), not accuracy: the sample case is a hippocampus MR,
whatever the installed classification model was trained on. They need the repository's sample_data folder (three
levels up from this file) and an installed classification model, and skip with the reason without them.

Run them with the module's Reload and Test button;
with ``slicer.testing.runUnitTest(['<repo>/CADClassify'], 'CADClassify')``,
through the module file's ``CADClassifyTest``, which delegates here;
or in an extension build tree with ``ctest -R py_CADClassifyModuleTest``.
"""

import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from CADClassify import CADClassifyLogic, markupsArguments

# <repo>/<Module>/Testing/Python/this file -> <repo>/sample_data/hippocampus (absent from the packaged extension)
SAMPLE_FOLDER = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                                              "sample_data", "hippocampus"))


class CADClassifyModuleTest(ScriptedLoadableModuleTest):
    """Classification from a segment, a point and an ROI on the sample case (see the module docstring)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ClassifySegmentPointAndROI()

    def test_ClassifySegmentPointAndROI(self):
        import CADExtension

        models = CADExtension.CADExtensionLogic().listModels(task="classification")
        if not models:
            self.skipTest("no classification model is installed")
        self.assertTrue(CADExtension.CADExtensionLogic().ensureDependencies(askConfirmation=False))
        folder = SAMPLE_FOLDER
        image, label = (os.path.join(folder, sub, "hippocampus_015.nii.gz") for sub in ("imagesTr", "labelsTr"))
        if not (os.path.isfile(image) and os.path.isfile(label)):
            self.skipTest(f"sample data not found under {folder}")
        volume = slicer.util.loadVolume(image)
        labelNode = slicer.util.loadLabelVolume(label)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelNode, segmentation)
        segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
        bounds = [0.0] * 6
        segmentation.GetSegmentation().GetSegment(segmentId).GetBounds(bounds)
        center = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
        point = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        point.AddControlPoint(center)
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        roi.SetCenter(center)
        roi.SetSize(bounds[1] - bounds[0] + 10, bounds[3] - bounds[2] + 10, bounds[5] - bounds[4] + 10)
        logic = CADClassifyLogic()
        for lesion in ({"segmentationNode": segmentation, "segmentId": segmentId}, markupsArguments(point),
                       markupsArguments(roi)):
            result = logic.run(volume, model=models[0].id, device="cpu", **lesion)
            values = list(result.probabilities.values())
            self.assertAlmostEqual(sum(values), 1.0, places=3)
            self.assertTrue(all(0.0 <= p <= 1.0 for p in values))
            self.assertEqual(result.predicted, max(result.probabilities, key=result.probabilities.get))
            self.assertEqual(result.tableNode.GetNumberOfRows(), len(values))
            if result.heatmapNode is not None:
                self.assertEqual(result.heatmapNode.GetImageData().GetDimensions(),
                                 volume.GetImageData().GetDimensions())
