"""In-Slicer tests of the CAD AI Segment Editor effect, NOT run in CI (CI has no Slicer application; the write path
itself is tested there on slicer-core: Testing/mrml/test_prompt_logic*.py). Slicer's effect-template test: a real
``qMRMLSegmentEditorWidget``, the effect chosen by name, prompts given through the effect's own handlers.

They need the repository's sample_data folder and the shipped hippocampus-interactive model, and skip without them.
Run with ``slicer.testing.runUnitTest(['<repo>/CADSegment/Testing/Python'], 'SegmentEditorCADAIEffectTest')`` or,
in an extension build tree, ``ctest -R py_SegmentEditorCADAIEffectTest``.
"""

import os
import time

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

SAMPLE = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "sample_data",
                                       "hippocampus"))
MODEL = "hippocampus-interactive"


class SegmentEditorCADAIEffectTest(ScriptedLoadableModuleTest):
    """A click becomes the segment; Undo reverts it; a finished neighbour survives with "overwrite none"."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_EffectIsRegistered()
        self.setUp()
        self.test_ClickSegmentsAndUndoReverts()
        self.setUp()
        self.test_FinishedNeighbourIsKept()

    def _editor(self):
        """A segment editor widget on the sample volume with one empty segment, and the CAD AI effect active."""
        from CADExtensionLib.command import engineFolder

        if not os.path.isfile(os.path.join(engineFolder(), "cadcore", "models", MODEL, "model.json")):
            self.skipTest(f"the {MODEL} model is not shipped in this build")
        image = os.path.join(SAMPLE, "imagesTr", "hippocampus_015.nii.gz")
        labels = os.path.join(SAMPLE, "labelsTr", "hippocampus_015.nii.gz")
        if not (os.path.isfile(image) and os.path.isfile(labels)):
            self.skipTest(f"sample data not found under {SAMPLE} (run from a repository checkout)")
        volume = slicer.util.loadVolume(image)
        truth = slicer.util.arrayFromVolume(slicer.util.loadLabelVolume(labels)) == 1
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("anterior")
        widget = slicer.qMRMLSegmentEditorWidget()
        widget.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        widget.setMRMLSegmentEditorNode(editorNode)
        widget.setSegmentationNode(segmentation)
        widget.setSourceVolumeNode(volume)
        widget.setCurrentSegmentID(segmentId)
        widget.setActiveEffectByName("CAD AI")
        effect = widget.activeEffect()
        self.assertIsNotNone(effect, "the CAD AI effect is not registered")
        effect.setParameter("Model", MODEL)
        effect.setParameter("Label", 1)
        self._keep = widget  # the widget must outlive this function
        return widget, effect, volume, segmentation, segmentId, truth

    def _deepestPointRas(self, volume, truth):
        from scipy import ndimage

        depth = ndimage.distance_transform_edt(truth)
        k, j, i = np.unravel_index(np.argmax(depth), depth.shape)
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        return matrix.MultiplyPoint([float(i), float(j), float(k), 1.0])[:3]

    def _waitForPrompt(self, effect, timeout=120.0):
        deadline = time.monotonic() + timeout
        logic = effect.self().logic
        while logic is not None and logic.isRunning() and time.monotonic() < deadline:
            slicer.app.processEvents()
            logic.processEvents()
            time.sleep(0.02)
        slicer.app.processEvents()
        self.assertFalse(logic is not None and logic.isRunning(), "the prompt did not finish in time")

    def _segmentArray(self, segmentation, segmentId, volume):
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume) > 0

    def test_EffectIsRegistered(self):
        widget = slicer.qMRMLSegmentEditorWidget()
        self.assertIn("CAD AI", widget.availableEffectNames())

    def test_ClickSegmentsAndUndoReverts(self):
        widget, effect, volume, segmentation, segmentId, truth = self._editor()
        effect.self().onClick(self._deepestPointRas(volume, truth), True)
        self._waitForPrompt(effect)
        mask = self._segmentArray(segmentation, segmentId, volume)
        dice = 2.0 * (mask & truth).sum() / max(1, mask.sum() + truth.sum())
        self.assertGreaterEqual(dice, 0.7, f"one click: Dice {dice:.3f}")
        widget.undo()
        self.assertEqual(self._segmentArray(segmentation, segmentId, volume).sum(), 0, "Undo left voxels behind")

    def test_FinishedNeighbourIsKept(self):
        widget, effect, volume, segmentation, segmentId, truth = self._editor()
        neighbourId = segmentation.GetSegmentation().AddEmptySegment("finished")
        finished = truth.astype(np.uint8)  # the neighbour already covers the whole structure
        slicer.util.updateSegmentBinaryLabelmapFromArray(finished, segmentation, neighbourId, volume)
        widget.mrmlSegmentEditorNode().SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
        widget.setCurrentSegmentID(segmentId)
        effect.self().onClick(self._deepestPointRas(volume, truth), True)
        self._waitForPrompt(effect)
        kept = self._segmentArray(segmentation, neighbourId, volume)
        self.assertTrue(np.array_equal(kept, truth), "the finished neighbour lost voxels")
