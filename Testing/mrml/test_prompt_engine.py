"""PromptLogic with the real engine (``cad interact`` in process, the shipped hippocampus-interactive model on a sample
case): the written segment is the CLI's mask, placed in world through the volume's parent transform; the volume is
exported once for several prompts; a bad prompt is the engine's one line and changes nothing; the exact argv; the
label named like the segment."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from CADExtensionLib.command import interactArgv
from CADSegmentLib import InProcessRunner, PromptLogic, VolumeFileCache, modelLabelForSegment

from .conftest import REPO
from .prompt_support import (
    FakeBackend,
    addSegmentation,
    fixedMask,
    linearTransform,
    segmentWorldPoints,
    volumeWorldPoints,
)

CASE = REPO / "sample_data" / "hippocampus" / "imagesTr" / "hippocampus_040.nii.gz"
TRUTH = REPO / "sample_data" / "hippocampus" / "labelsTr" / "hippocampus_040.nii.gz"
MODEL = "hippocampus-interactive"


def test_interact_argv_is_exact():
    argv = interactArgv("py", "in.nrrd", "out.nrrd", "m", 2, positive=[[-1.5, 2, 3]], negative=[(4, -5.25, 6)],
                        box=[-1, 2, 3, 4, 5, 6], scribblePath="s.nrrd", previousPath="p.nrrd",
                        uncertaintyPath="u.nrrd", device="cpu")
    assert argv == ["py", "-m", "cadcore", "interact", "in.nrrd", "-m", "m", "-o", "out.nrrd", "--label", "2",
                    "--click=+-1.5,2.0,3.0", "--click=-4.0,-5.25,6.0", "--box=-1.0,2.0,3.0,4.0,5.0,6.0",
                    "--scribble", "s.nrrd", "--previous", "p.nrrd", "--uncertainty", "u.nrrd", "--device", "cpu",
                    "--force"]
    assert interactArgv("py", "i", "o", "m", 1) == ["py", "-m", "cadcore", "interact", "i", "-m", "m", "-o", "o",
                                                    "--label", "1", "--device", "auto", "--force"]
    for bad in ({"label": 0}, {"label": True}, {"device": "gpu"}, {"positive": [[1, 2]]}, {"box": [1, 2, 3]}):
        with pytest.raises(ValueError):
            interactArgv("py", "i", "o", "m", **{"label": 1, **bad})


def test_label_defaults_to_the_model_label_named_like_the_segment(mrml):
    assert modelLabelForSegment("posterior HIPPOCAMPUS", "hippocampus-unet") == 2
    assert modelLabelForSegment(" Prompted structure", MODEL) == 1
    shipped = REPO / "CADExtension" / "cadcore" / "models" / "hippocampus-unet"
    assert modelLabelForSegment("Anterior hippocampus", str(shipped)) == 1  # a package folder instead of an id
    with pytest.raises(ValueError, match="1 = Anterior hippocampus, 2 = Posterior hippocampus"):
        modelLabelForSegment("liver", "hippocampus-unet")
    volume = slicer.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32))
    segmentation, (segmentId,) = addSegmentation(volume, ("Anterior hippocampus",))
    backend = FakeBackend(fixedMask(np.zeros((4, 4, 4), np.uint8)))
    PromptLogic(backend=backend).run(volume, segmentation, segmentId, model="hippocampus-unet",
                                     positivePoints=[[1, 1, 1]])
    assert backend.calls[0]["request"].label == 1


def test_volume_file_cache_reuses_files_and_keeps_only_the_recent_volumes(mrml, tmp_path):
    volumes = [slicer.util.addVolumeFromArray(np.full((3, 4, 5), n, np.float32)) for n in range(3)]
    cache = VolumeFileCache(tmp_path, maxVolumes=2)
    first = cache.path(volumes[0])
    assert cache.path(volumes[0]) == first and cache.exports == 1
    cache.path(volumes[1])
    cache.path(volumes[0])  # used again: volumes[1] is now the oldest
    cache.path(volumes[2])
    assert cache.exports == 3 and first.is_file() and len(list(cache.folder.iterdir())) == 2
    moved = vtk.vtkMatrix4x4()
    moved.SetElement(0, 3, 5.0)
    volumes[0].SetIJKToRASMatrix(moved)  # new geometry, same voxels: exported again
    assert cache.path(volumes[0]) != first and cache.exports == 4
    cache.clear()
    assert list(tmp_path.iterdir()) == []


def readVolume(scene, path, name="case"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    return node


def structureCentre(label: sitk.Image, value: int) -> np.ndarray:
    """Local RAS of the label voxel nearest the structure's centroid (a user's click), and that voxel."""
    hits = np.argwhere(sitk.GetArrayViewFromImage(label) == value)
    voxel = hits[np.argmin(((hits - hits.mean(0)) ** 2).sum(1))]
    x, y, z = label.TransformIndexToPhysicalPoint([int(v) for v in voxel[::-1]])
    return np.array([-x, -y, z])


@pytest.fixture
def moved_case(mrml):
    """The sample case under a rotation + translation; the segmentation under no transform."""
    volume = readVolume(mrml.scene, CASE)
    transform = linearTransform(mrml.scene, 25.0, (0.2, 0.4, 1.0), (30.0, -12.0, 8.0))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    segmentation, (segmentId,) = addSegmentation(volume, ("Prompted structure",))
    local = structureCentre(sitk.ReadImage(str(TRUTH)), 1)
    toParent = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToParent(toParent)
    world = toParent.MultiplyPoint([*local, 1.0])[:3]
    return volume, segmentation, segmentId, local, np.array(world)


def cliMask(inputPath, tmp_path, *clicks: str) -> np.ndarray:
    from cadcore.cli import main

    output = tmp_path / "cli-mask.nrrd"
    assert main(["interact", str(inputPath), "-m", MODEL, "-o", str(output), "--label", "1", *clicks,
                 "--device", "cpu", "--force"]) == 0
    return sitk.GetArrayFromImage(sitk.ReadImage(str(output)))


def test_real_engine_segment_equals_the_cli_mask_and_the_volume_is_exported_once(moved_case, tmp_path, mrml):
    volume, segmentation, segmentId, local, world = moved_case
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    logic = PromptLogic(runner=InProcessRunner(), device="cpu", temporaryFolder=temporary)
    report = logic.run(volume, segmentation, segmentId, model=MODEL, positivePoints=[world.tolist()])
    assert report["label"] == 1 and report["voxels"] > 100 and "timings" in report
    assert np.allclose(report["prompts"]["positive"][0], local, atol=1e-3)  # the engine got the local click
    cache = logic.backend.volumes
    expected = cliMask(cache.path(volume), tmp_path, "--click=+" + ",".join(map(repr, local.tolist())))
    assert expected.sum() == report["voxels"]
    written = segmentWorldPoints(segmentation, segmentId)
    assert len(written) == expected.sum()
    assert np.allclose(np.sort(written, axis=0), np.sort(volumeWorldPoints(volume, expected), axis=0), atol=1e-3)

    negative = (world + [0.0, 0.0, 2.0]).tolist()  # a corrective click: the second prompt reuses the file
    logic.run(volume, segmentation, segmentId, model=MODEL, positivePoints=[world.tolist()],
              negativePoints=[negative], refine=True, uncertainty=True)
    assert cache.exports == 1
    assert logic.lastUncertaintyNode.GetName() == "Prompted structure uncertainty"
    assert logic.lastUncertaintyNode.GetTransformNodeID() == volume.GetTransformNodeID()
    logic.editorLogic.Undo()
    assert len(segmentWorldPoints(segmentation, segmentId)) == expected.sum()  # back to the first prompt

    slicer.util.arrayFromVolume(volume)[0, 0, 0] += 1.0  # edited voxels: the next prompt exports again
    slicer.util.arrayFromVolumeModified(volume)
    logic.run(volume, segmentation, segmentId, model=MODEL, positivePoints=[world.tolist()])
    assert cache.exports == 2 and len(list(cache.folder.iterdir())) == 1
    assert [p.name for p in temporary.iterdir()] == [cache.folder.name]  # no prompt workspace is left
    logic.cleanup()
    assert list(temporary.iterdir()) == []


def test_real_engine_refusal_is_one_line_and_changes_nothing(moved_case, tmp_path):
    volume, segmentation, segmentId, local, world = moved_case
    logic = PromptLogic(runner=InProcessRunner(), device="cpu", temporaryFolder=tmp_path)
    with pytest.raises(RuntimeError) as failure:  # only a negative click: nothing positive to segment
        logic.run(volume, segmentation, segmentId, model=MODEL, negativePoints=[world.tolist()])
    message = str(failure.value)
    assert message.startswith("prompt failed: cad interact: error: ") and "positive click" in message
    assert "\n" not in message
    assert len(segmentWorldPoints(segmentation, segmentId)) == 0 and not logic.editorLogic.CanUndo()
    assert not logic.isRunning()
    assert [p.name for p in tmp_path.iterdir()] == [logic.backend.volumes.folder.name]  # only the reusable volume

    finished = []  # a cancelled real prompt: whether the engine stopped or had just finished, nothing is written
    assert logic.run(volume, segmentation, segmentId, model=MODEL, positivePoints=[world.tolist()], wait=False,
                     onFinished=lambda *args: finished.append(args)) is None
    assert logic.cancel()
    assert logic.wait(60)
    assert finished == [(None, "cancelled")]
    assert len(segmentWorldPoints(segmentation, segmentId)) == 0 and not logic.editorLogic.CanUndo()
    assert [p.name for p in tmp_path.iterdir()] == [logic.backend.volumes.folder.name]
    logic.cleanup()
    assert list(tmp_path.iterdir()) == []
