"""What the CAD AI effect decides without Qt (CADSegmentLib.PromptTools), on real MRML: model order, default label,
the click history, and painted strokes into a scribble labelmap on an oblique, anisotropic, transformed volume."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from CADExtensionLib.model_summary import ModelSummary
from CADSegmentLib.PromptTools import (
    BACKGROUND,
    FOREGROUND,
    PromptHistory,
    defaultLabel,
    promptModels,
    strokesToLabelmap,
)

from .test_geometry import oblique_ijk_to_ras


def summary(modelId: str, guided: bool = False, task: str = "segmentation", labels=None) -> ModelSummary:
    return ModelSummary(id=modelId, task=task, path=f"/models/{modelId}", guided=guided,
                        labels=labels if labels is not None else {"1": "structure"})


def test_prompt_models_guided_then_generic_then_plain():
    models = [summary("hippocampus-unet"), summary("adrenal-classifier", task="classification"),
              summary("prompt-3d", guided=True), summary("brain-tumour-interactive", guided=True),
              summary("brain-tumour-cascade"), summary("hippocampus-interactive", guided=True)]
    assert [m.id for m in promptModels(models)] == [
        "brain-tumour-interactive", "hippocampus-interactive", "prompt-3d", "brain-tumour-cascade",
        "hippocampus-unet"]


def test_default_label_is_named_like_the_segment():
    model = summary("hippocampus-unet", labels={"0": "background", "1": "Anterior", "2": "Posterior"})
    assert defaultLabel(model, "posterior") == 2
    assert defaultLabel(model, " Anterior ") == 1
    assert defaultLabel(model, "Segment_1") is None  # two labels, none named so: the user chooses
    assert defaultLabel(summary("prompt-3d", labels={"0": "background", "1": "prompted structure"}), "liver") == 1


def test_history_belongs_to_one_target():
    history = PromptHistory().forTarget(("vol", "seg", "segment_1", "model"))
    assert not history.canPrompt
    history.add([1, 2, 3], include=True)
    history.add([4, 5, 6, 9], include=False)
    history.answered = True
    assert history.positive == [[1.0, 2.0, 3.0]] and history.negative == [[4.0, 5.0, 6.0]] and history.canPrompt
    assert history.forTarget(("vol", "seg", "segment_1", "model")) is history and history.answered
    history.forTarget(("vol", "seg", "segment_2", "model"))  # another segment: its own clicks
    assert history.positive == [] and history.negative == [] and not history.answered
    history.add([1, 1, 1], include=True)
    history.undoLast(include=True)
    assert history.positive == []


@pytest.fixture
def transformed_volume(mrml):
    """Oblique, anisotropic, under a rotation + translation: the strokes are world points."""
    volume = slicer.vtkMRMLScalarVolumeNode()
    image = vtk.vtkImageData()
    image.SetDimensions(30, 24, 12)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    image.GetPointData().GetScalars().Fill(0)
    volume.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    for row, values in enumerate(oblique_ijk_to_ras()):
        for column, value in enumerate(values):
            matrix.SetElement(row, column, value)
    volume.SetIJKToRASMatrix(matrix)
    mrml.scene.AddNode(volume)
    transformNode = slicer.vtkMRMLLinearTransformNode()
    mrml.scene.AddNode(transformNode)
    toParent = vtk.vtkTransform()
    toParent.Translate(12.0, -7.0, 30.0)
    toParent.RotateZ(25.0)
    transformNode.SetMatrixTransformToParent(toParent.GetMatrix())
    volume.SetAndObserveTransformNodeID(transformNode.GetID())
    return volume, toParent


def world_point_of_voxel(volume, toParent, ijk) -> list[float]:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    local = matrix.MultiplyPoint([*map(float, ijk), 1.0])[:3]
    return list(toParent.TransformPoint(local))


def labels_of(node) -> np.ndarray:
    image = node.GetImageData()
    from vtk.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(image.GetDimensions()[::-1])


def test_strokes_land_on_the_voxels_under_the_world_points(transformed_volume):
    volume, toParent = transformed_volume
    start, end = (5, 6, 4), (20, 6, 4)
    stroke = [world_point_of_voxel(volume, toParent, start), world_point_of_voxel(volume, toParent, end)]
    outside = [world_point_of_voxel(volume, toParent, (10, 18, 8))]
    node = strokesToLabelmap(volume, [(FOREGROUND, stroke), (BACKGROUND, outside)], radiusMm=1.0)
    array = labels_of(node)  # (k, j, i)
    assert array.shape == (12, 24, 30)
    for i in range(start[0], end[0] + 1):  # the densified stroke leaves no gap along the line
        assert array[4, 6, i] == FOREGROUND, f"voxel ({i}, 6, 4) missed"
    assert array[8, 18, 10] == BACKGROUND
    assert set(np.unique(array)) == {0, FOREGROUND, BACKGROUND}
    assert array[4, 20, 5] == 0  # far from every stroke
    grid, expected = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(grid)
    volume.GetIJKToRASMatrix(expected)
    assert all(grid.GetElement(r, c) == expected.GetElement(r, c) for r in range(4) for c in range(4))
    assert node.GetScene() is None  # not added to the scene: nothing left behind


def test_strokes_refuse_other_values_and_radius(transformed_volume):
    volume, _ = transformed_volume
    with pytest.raises(ValueError, match="stroke value"):
        strokesToLabelmap(volume, [(3, [[0, 0, 0]])])
    with pytest.raises(ValueError, match="radius"):
        strokesToLabelmap(volume, [(FOREGROUND, [[0, 0, 0]])], radiusMm=0)


def test_strokes_accumulate_and_reach_the_engine_as_the_scribble(transformed_volume):
    """Every stroke so far goes with a prompt (as every click does); painted world points arrive in the engine's
    scribble file on the volume's grid, through PromptLogic."""
    from CADSegmentLib import PromptLogic

    from .prompt_support import FakeBackend, addSegmentation, fixedMask

    volume, toParent = transformed_volume
    history = PromptHistory().forTarget(("v", "s", "1", "m"))
    history.addStroke(BACKGROUND, [world_point_of_voxel(volume, toParent, (10, 18, 8))])
    assert not history.canPrompt  # only "not this": nothing to segment yet
    history.addStroke(FOREGROUND, [world_point_of_voxel(volume, toParent, (5, 6, 4))])
    assert history.canPrompt and len(history.strokes) == 2
    with pytest.raises(ValueError):
        history.addStroke(3, [[0, 0, 0]])
    segmentation, (segmentId,) = addSegmentation(volume, ("target",))
    backend = FakeBackend(fixedMask(np.zeros((12, 24, 30), np.uint8)))
    PromptLogic(backend=backend).run(volume, segmentation, segmentId, model="m", label=1,
                                     scribble=strokesToLabelmap(volume, history.strokes, radiusMm=1.0))
    sent = backend.calls[0]["scribble"]
    assert sent[4, 6, 5] == FOREGROUND and sent[8, 18, 10] == BACKGROUND
    history.clear()
    assert history.strokes == [] and not history.canPrompt
