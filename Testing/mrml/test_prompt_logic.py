"""PromptLogic's write path on real MRML and the real ``vtkSlicerSegmentEditorLogic`` (slicer-core): every mask
mode, every overwrite mode, the intensity range, undo/redo, oblique volumes, parent transforms, another segmentation
geometry, refine, scribbles, the ROI, uncertainty, non-blocking runs and failures. The engine is a fake backend that
answers with a known mask on the volume's grid (its signature is checked against the protocol); the real engine is
in test_prompt_engine.py."""

from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest
import slicer
from CADSegmentLib import CommandBackend, PromptBackend, PromptCancelled, PromptLogic

from .prompt_support import (
    FakeBackend,
    addSegmentation,
    addVolume,
    fixedMask,
    linearTransform,
    localRasToIjk,
    paint,
    segmentArray,
    segmentWorldPoints,
    volumeWorldPoints,
)
from .test_geometry import oblique_ijk_to_ras

SHAPE = (12, 14, 16)  # (K, J, I)
Seg = slicer.vtkMRMLSegmentationNode
Editor = slicer.vtkMRMLSegmentEditorNode


def block(k, j, i) -> np.ndarray:
    array = np.zeros(SHAPE, np.uint8)
    array[k, j, i] = 1
    return array


MASK = block(slice(2, 10), slice(2, 12), slice(2, 14))  # the engine's answer: a large block
A = block(slice(3, 6), slice(3, 7), slice(3, 8))  # "other": a visible finished segment inside the block
B = block(slice(6, 9), slice(8, 11), slice(9, 13))  # "hidden": an invisible finished segment inside the block


@pytest.fixture
def scene3(mrml):
    """A volume, a segmentation with an empty target and two finished neighbours (one hidden), an editor node."""
    volume = addVolume(np.arange(np.prod(SHAPE)).reshape(SHAPE))
    segmentation, (target, other, hidden) = addSegmentation(volume, ("target", "other", "hidden"))
    paint(segmentation, other, volume, A)
    paint(segmentation, hidden, volume, B)
    segmentation.GetDisplayNode().SetSegmentVisibility(hidden, False)
    editor = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    return volume, segmentation, (target, other, hidden), editor


def prompt(logic, volume, segmentation, segmentId, editor=None, **options):
    return logic.run(volume, segmentation, segmentId, model="m", label=1, positivePoints=[[5.0, 5.0, 5.0]],
                     segmentEditorNode=editor, **options)


def test_fake_backend_has_the_protocols_signature():
    for real in (PromptBackend.interact, CommandBackend.interact):
        assert inspect.signature(FakeBackend.interact).parameters.keys() == inspect.signature(real).parameters.keys()
    assert isinstance(FakeBackend(fixedMask(MASK)), PromptBackend)


def test_one_prompt_is_one_undo_step_and_redo_restores_it(scene3, tmp_path):
    volume, segmentation, (target, *_), editor = scene3
    logic = PromptLogic(backend=FakeBackend(fixedMask(MASK)), temporaryFolder=tmp_path)
    report = prompt(logic, volume, segmentation, target, editor)
    assert report is logic.lastReport and report["voxels"] == MASK.sum()
    assert (segmentArray(segmentation, target, volume) == MASK).all()
    logic.editorLogic.Undo()
    assert segmentArray(segmentation, target, volume).sum() == 0 and not logic.editorLogic.CanUndo()
    logic.editorLogic.Redo()
    assert (segmentArray(segmentation, target, volume) == MASK).all()
    assert list(tmp_path.iterdir()) == []  # the prompt's workspace is gone


def test_two_prompts_two_undos(scene3, tmp_path):
    volume, segmentation, (target, *_), editor = scene3
    small = block(slice(4, 6), slice(4, 6), slice(4, 6))
    answers = iter([MASK, small])
    logic = PromptLogic(backend=FakeBackend(lambda *args: next(answers)), temporaryFolder=tmp_path)
    prompt(logic, volume, segmentation, target, editor)
    prompt(logic, volume, segmentation, target, editor)
    assert (segmentArray(segmentation, target, volume) == small).all()  # a prompt replaces the segment
    logic.editorLogic.Undo()
    assert (segmentArray(segmentation, target, volume) == MASK).all()
    logic.editorLogic.Undo()
    assert segmentArray(segmentation, target, volume).sum() == 0 and not logic.editorLogic.CanUndo()


EXPECTED_BY_MASK_MODE = {
    Seg.EditAllowedEverywhere: MASK,
    Seg.EditAllowedInsideAllSegments: MASK & (A | B),
    Seg.EditAllowedInsideVisibleSegments: MASK & A,
    Seg.EditAllowedOutsideAllSegments: MASK & ~(A | B) & 1,
    Seg.EditAllowedOutsideVisibleSegments: MASK & ~A & 1,
    Seg.EditAllowedInsideSingleSegment: MASK & B,  # the mask segment is "hidden"
}


@pytest.mark.parametrize("maskMode", list(EXPECTED_BY_MASK_MODE), ids=lambda mode: Seg.ConvertMaskModeToString(mode))
def test_each_mask_mode_limits_the_write_to_the_editable_area(scene3, maskMode):
    volume, segmentation, (target, other, hidden), editor = scene3
    editor.SetMaskMode(maskMode)
    editor.SetMaskSegmentID(hidden)
    editor.SetOverwriteMode(Editor.OverwriteNone)
    logic = PromptLogic(backend=FakeBackend(fixedMask(MASK)))
    prompt(logic, volume, segmentation, target, editor)
    assert (segmentArray(segmentation, target, volume) == EXPECTED_BY_MASK_MODE[maskMode]).all()
    assert (segmentArray(segmentation, other, volume) == A).all()
    assert (segmentArray(segmentation, hidden, volume) == B).all()


@pytest.mark.parametrize(("overwriteMode", "otherAfter", "hiddenAfter"), [
    (Editor.OverwriteAllSegments, np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)),
    (Editor.OverwriteVisibleSegments, np.zeros(SHAPE, np.uint8), B),
    (Editor.OverwriteNone, A, B),
], ids=["all", "visible", "none"])
def test_each_overwrite_mode(scene3, overwriteMode, otherAfter, hiddenAfter):
    volume, segmentation, (target, other, hidden), editor = scene3
    editor.SetOverwriteMode(overwriteMode)
    logic = PromptLogic(backend=FakeBackend(fixedMask(MASK)))
    prompt(logic, volume, segmentation, target, editor)
    assert (segmentArray(segmentation, target, volume) == MASK).all()
    assert (segmentArray(segmentation, other, volume) == otherAfter).all()
    assert (segmentArray(segmentation, hidden, volume) == hiddenAfter).all()
    logic.editorLogic.Undo()  # the neighbours come back with the same single undo
    assert (segmentArray(segmentation, other, volume) == A).all()
    assert (segmentArray(segmentation, hidden, volume) == B).all()


def test_the_source_volume_intensity_range(scene3):
    volume, segmentation, (target, *_), editor = scene3
    values = slicer.util.arrayFromVolume(volume)
    low, high = 900.0, 2000.0
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(low, high)
    logic = PromptLogic(backend=FakeBackend(fixedMask(MASK)))
    prompt(logic, volume, segmentation, target, editor)
    expected = MASK & ((values >= low) & (values <= high))
    assert 0 < expected.sum() < MASK.sum()
    assert (segmentArray(segmentation, target, volume) == expected).all()


def test_default_editor_node_is_private_with_slicers_defaults(scene3, mrml):
    volume, segmentation, (target, other, hidden), _ = scene3
    logic = PromptLogic(backend=FakeBackend(fixedMask(MASK)))
    prompt(logic, volume, segmentation, target)
    prompt(logic, volume, segmentation, target)
    editors = [mrml.scene.GetNthNodeByClass(i, "vtkMRMLSegmentEditorNode")
               for i in range(mrml.scene.GetNumberOfNodesByClass("vtkMRMLSegmentEditorNode"))]
    hiddenNodes = [node for node in editors if not node.GetSaveWithScene()]
    assert len(editors) == 2 and len(hiddenNodes) == 1 and hiddenNodes[0].GetHideFromEditors()
    assert hiddenNodes[0].GetMaskMode() == Seg.EditAllowedEverywhere
    assert hiddenNodes[0].GetOverwriteMode() == Editor.OverwriteAllSegments  # Slicer's default: overlap is taken
    assert segmentArray(segmentation, other, volume).sum() == 0
    assert segmentArray(segmentation, hidden, volume).sum() == 0
    logic.editorLogic.Undo()
    logic.editorLogic.Undo()
    assert (segmentArray(segmentation, other, volume) == A).all()
    logic.cleanup()
    assert hiddenNodes[0].GetScene() is None


def test_oblique_anisotropic_volume_writes_where_the_mask_is_in_world(mrml):
    volume = addVolume(np.zeros(SHAPE), oblique_ijk_to_ras())
    segmentation, (target,) = addSegmentation(volume)
    logic = PromptLogic(backend=FakeBackend(fixedMask(MASK)))
    prompt(logic, volume, segmentation, target)
    assert (segmentArray(segmentation, target, volume) == MASK).all()
    written, expected = segmentWorldPoints(segmentation, target), volumeWorldPoints(volume, MASK)
    assert len(written) == len(expected)
    assert np.allclose(np.sort(written, axis=0), np.sort(expected, axis=0), atol=1e-4)


@pytest.mark.parametrize("segmentationTransformed", [True, False], ids=["segmentation-moved-too", "segmentation-not"])
def test_volume_with_a_parent_transform(mrml, segmentationTransformed):
    volume = addVolume(np.zeros(SHAPE), oblique_ijk_to_ras(spacing=(0.9, 1.3, 2.0)))
    transform = linearTransform(mrml.scene, 30.0, (0.3, 1.0, 0.2), (12.0, -7.5, 20.0))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    segmentation, (target,) = addSegmentation(volume, transformNode=transform if segmentationTransformed else None)
    voxel = (7, 5, 4)  # (K, J, I)
    expected = block(*voxel)
    worldClick = volumeWorldPoints(volume, expected)[0]

    def answer(request, values, previous, scribble):
        if not request.positive:
            return expected
        index = np.rint(localRasToIjk(volume, request.positive[0])).astype(int)
        return block(index[2], index[1], index[0])

    logic = PromptLogic(backend=FakeBackend(answer))
    logic.run(volume, segmentation, target, model="m", label=1, positivePoints=[worldClick.tolist()])
    assert np.allclose(localRasToIjk(volume, logic.backend.calls[0]["request"].positive[0]), voxel[::-1], atol=1e-6)
    written = segmentWorldPoints(segmentation, target)
    assert len(written) >= 1
    assert np.allclose(written.mean(0), worldClick, atol=1e-3)
    logic.run(volume, segmentation, target, model="m", label=1, positivePoints=[worldClick.tolist()], refine=True)
    assert (logic.backend.calls[1]["previous"] == expected).all()  # the segment goes back on the volume's grid
    logic.run(volume, segmentation, target, model="m", label=1, roi=[*(worldClick - 1.0), *(worldClick + 1.0)])
    box = np.array([localRasToIjk(volume, corner) for corner in np.reshape(logic.backend.calls[2]["request"].box,
                                                                             (2, 3))])
    assert np.all(box.min(0) < voxel[::-1]) and np.all(box.max(0) > voxel[::-1])  # the world box, in voxels
    assert np.all(box.max(0) - box.min(0) < 4.0)


def test_segmentation_with_another_finer_geometry(mrml):
    volume = addVolume(np.zeros(SHAPE), oblique_ijk_to_ras())
    fine = oblique_ijk_to_ras()
    fine[:3, :3] /= 2.0  # half the spacing, same origin and directions
    reference = addVolume(np.zeros(tuple(2 * n for n in SHAPE)), fine, "fine reference")
    segmentation, (target,) = addSegmentation(volume, referenceVolume=reference)
    logic = PromptLogic(backend=FakeBackend(fixedMask(MASK)))
    prompt(logic, volume, segmentation, target)
    labelmap = slicer.vtkOrientedImageData()
    segmentation.GetBinaryLabelmapRepresentation(target, labelmap)
    assert np.allclose(labelmap.GetSpacing(), np.array(reference.GetSpacing()), atol=1e-6)  # edited on its own grid
    assert (segmentArray(segmentation, target, volume) == MASK).all()
    written = segmentWorldPoints(segmentation, target)
    assert np.allclose(written.mean(0), volumeWorldPoints(volume, MASK).mean(0), atol=0.6)


def test_refine_sends_the_segment_and_keeps_what_the_engine_returns(scene3):
    volume, segmentation, (target, *_), editor = scene3
    before = block(slice(1, 3), slice(1, 3), slice(1, 3))
    paint(segmentation, target, volume, before)
    added = block(slice(5, 7), slice(5, 7), slice(5, 7))
    backend = FakeBackend(lambda request, values, previous, scribble: before | added)
    logic = PromptLogic(backend=backend)
    prompt(logic, volume, segmentation, target, editor, refine=True)
    assert (backend.calls[0]["previous"] == before).all()
    assert (segmentArray(segmentation, target, volume) == (before | added)).all()
    prompt(logic, volume, segmentation, target, editor)  # without refine nothing is sent
    assert backend.calls[1]["previous"] is None


def test_scribble_is_sent_on_the_volume_grid_and_another_grid_is_refused(scene3, mrml):
    volume, segmentation, (target, *_), editor = scene3
    strokes = np.zeros(SHAPE, np.uint8)
    strokes[4, 4, 4:9], strokes[8, 9, 2:5] = 1, 2
    scribble = slicer.util.addVolumeFromArray(strokes, np.eye(4), "strokes", "vtkMRMLLabelMapVolumeNode")
    backend = FakeBackend(fixedMask(MASK))
    logic = PromptLogic(backend=backend)
    logic.run(volume, segmentation, target, model="m", label=1, scribble=scribble, segmentEditorNode=editor)
    assert (backend.calls[0]["scribble"] == strokes).all()
    shifted = slicer.util.addVolumeFromArray(strokes, np.diag([2.0, 1.0, 1.0, 1.0]), "off grid",
                                             "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(ValueError, match="not on volume"):
        logic.run(volume, segmentation, target, model="m", label=1, scribble=shifted)
    assert len(backend.calls) == 1 and not logic.isRunning()


def test_roi_list_and_rotated_roi_node_become_the_voxel_box(scene3, mrml):
    volume, segmentation, (target, *_), editor = scene3
    backend = FakeBackend(fixedMask(MASK))
    logic = PromptLogic(backend=backend)
    logic.run(volume, segmentation, target, model="m", label=1, roi=[2.0, 3.0, 4.0, 8.5, 9.0, 10.0])
    assert backend.calls[-1]["request"].box == pytest.approx((2.0, 3.0, 4.0, 8.5, 9.0, 10.0))
    roi = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(0.0, 0.0, 5.0)
    roi.SetSize(4.0, 4.0, 2.0)
    transform = linearTransform(mrml.scene, 45.0, (0, 0, 1), (8.0, 7.0, 0.0))
    roi.SetAndObserveTransformNodeID(transform.GetID())
    logic.run(volume, segmentation, target, model="m", label=1, roi=roi)
    box = np.array(backend.calls[-1]["request"].box).reshape(2, 3)
    halfDiagonal = 2.0 * np.sqrt(2.0)  # the 4 × 4 mm square turned 45° about S: its bounding box in R and A
    centre = np.array([8.0, 7.0, 5.0])
    assert box.min(0) == pytest.approx(centre - [halfDiagonal, halfDiagonal, 1.0], abs=1e-6)
    assert box.max(0) == pytest.approx(centre + [halfDiagonal, halfDiagonal, 1.0], abs=1e-6)
    with pytest.raises(ValueError, match="does not overlap"):
        logic.run(volume, segmentation, target, model="m", label=1, roi=[500, 500, 500, 510, 510, 510])


def test_uncertainty_becomes_one_volume_per_segment_replaced_by_the_next(scene3, mrml):
    volume, segmentation, (target, *_), editor = scene3
    entropy = np.linspace(0, 1, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    logic = PromptLogic(backend=FakeBackend(fixedMask(MASK), uncertainty=entropy))
    prompt(logic, volume, segmentation, target, editor, uncertainty=True)
    first = logic.lastUncertaintyNode
    assert first.GetName() == "target uncertainty" and np.allclose(slicer.util.arrayFromVolume(first), entropy)
    count = mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    prompt(logic, volume, segmentation, target, editor, uncertainty=True)
    assert logic.lastUncertaintyNode is first and mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count


def test_failed_backend_changes_nothing_and_leaves_no_undo_or_files(scene3, tmp_path):
    volume, segmentation, (target, other, _), editor = scene3
    backend = FakeBackend(fixedMask(MASK), error=RuntimeError("prompt failed: cad interact: error: x: broken"))
    finished = []
    logic = PromptLogic(backend=backend, temporaryFolder=tmp_path)
    with pytest.raises(RuntimeError, match="cad interact: error: x: broken"):
        prompt(logic, volume, segmentation, target, editor, onFinished=lambda *args: finished.append(args))
    assert finished == [(None, "prompt failed: cad interact: error: x: broken")]
    assert segmentArray(segmentation, target, volume).sum() == 0
    assert (segmentArray(segmentation, other, volume) == A).all()
    assert not logic.editorLogic.CanUndo() and not logic.isRunning() and list(tmp_path.iterdir()) == []


def test_non_blocking_prompt_is_written_by_process_events_and_cancel_writes_nothing(scene3, tmp_path):
    volume, segmentation, (target, *_), editor = scene3
    release = threading.Event()

    def slow(request, values, previous, scribble):
        release.wait(10)
        return MASK

    finished = []
    logic = PromptLogic(backend=FakeBackend(slow), temporaryFolder=tmp_path)
    assert prompt(logic, volume, segmentation, target, editor, wait=False,
                  onFinished=lambda *args: finished.append(args)) is None
    assert logic.isRunning() and segmentArray(segmentation, target, volume).sum() == 0
    with pytest.raises(RuntimeError, match="already running"):
        prompt(logic, volume, segmentation, target, editor)
    release.set()
    assert logic.wait(10)
    assert finished[0][1] is None and (segmentArray(segmentation, target, volume) == MASK).all()

    release.clear()
    prompt(logic, volume, segmentation, target, editor, wait=False, onFinished=lambda *args: finished.append(args))
    assert logic.cancel()
    release.set()
    assert logic.wait(10)
    assert finished[1] == (None, "cancelled")
    assert (segmentArray(segmentation, target, volume) == MASK).all()  # the cancelled prompt wrote nothing
    logic.editorLogic.Undo()
    assert segmentArray(segmentation, target, volume).sum() == 0 and not logic.editorLogic.CanUndo()
    assert list(tmp_path.iterdir()) == []
    assert issubclass(PromptCancelled, RuntimeError)


def test_an_injected_editor_logic_holds_the_undo_steps(scene3):
    volume, segmentation, (target, *_), editor = scene3
    shared = slicer.vtkSlicerSegmentEditorLogic()
    logic = PromptLogic(backend=FakeBackend(fixedMask(MASK)), editorLogic=shared)
    prompt(logic, volume, segmentation, target, editor)
    assert logic.editorLogic is shared and shared.CanUndo()
    assert set(logic.lastTimings) == {"backend", "write"}
    shared.Undo()
    assert segmentArray(segmentation, target, volume).sum() == 0


class CountingEditorLogic(slicer.vtkSlicerSegmentEditorLogic):
    """The real logic, counting the undo steps PromptLogic saves (it calls SaveStateForUndo from Python)."""

    saved = 0

    def SaveStateForUndo(self):
        self.saved += 1
        return super().SaveStateForUndo()


def test_a_segment_deleted_while_the_engine_works_gets_nothing_and_no_undo_step(scene3):
    volume, segmentation, (target, *_), editor = scene3
    release = threading.Event()
    counting = CountingEditorLogic()
    finished = []
    logic = PromptLogic(backend=FakeBackend(lambda *args: release.wait(10) and MASK), editorLogic=counting)
    prompt(logic, volume, segmentation, target, editor, wait=False, onFinished=lambda *args: finished.append(args))
    segmentation.GetSegmentation().RemoveSegment(target)
    release.set()
    assert logic.wait(10)
    assert finished[0][0] is None and "was removed" in finished[0][1] and counting.saved == 0
    prompt(logic, volume, segmentation, segmentation.GetSegmentation().AddEmptySegment("", "again"), editor)
    assert counting.saved == 1
