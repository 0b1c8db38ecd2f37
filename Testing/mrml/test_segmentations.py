"""Engine labelmaps into segmentation nodes on real MRML: names, colours, terminology, voxels, reference geometry,
subject hierarchy, collisions with existing segments, and clean-up on failure."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from CADExtensionLib.segmentations import (
    EMPTY_TERMINOLOGY,
    importLabelmapToSegmentation,
    terminologyEntry,
    uniqueSegmentName,
)
from CADExtensionLib.volumes import ijkToRASArray

from .test_geometry import RAS_TO_LPS, oblique_ijk_to_ras

HIPPOCAMPUS_TERMINOLOGY = {
    "category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
    "type": {"scheme": "SCT", "code": "5976000", "meaning": "Hippocampus"},
    "type_modifier": {"scheme": "SCT", "code": "255549009", "meaning": "Anterior"},
}
LABELS = [
    {"value": 1, "name": "Anterior hippocampus", "color": [0.9, 0.3, 0.2], "terminology": HIPPOCAMPUS_TERMINOLOGY},
    {"value": 2, "name": "Posterior hippocampus", "color": [0.2, 0.6, 0.9], "terminology": None},
    {"value": 3, "name": "Not found", "color": [0.1, 0.9, 0.1]},
]


@pytest.fixture
def case(mrml, tmp_path):
    """An oblique volume node and a labelmap file on its grid holding labels 1 and 2 (label 3 absent)."""
    import slicer

    shape = (9, 12, 10)  # (K, J, I)
    ijkToRAS = oblique_ijk_to_ras(spacing=(1.0, 0.8, 1.5))
    volume = slicer.util.addVolumeFromArray(np.random.default_rng(0).normal(size=shape).astype(np.float32),
                                            ijkToRAS, "T1 oblique")
    truth = np.zeros(shape, np.uint8)
    truth[2:5, 3:8, 2:6] = 1
    truth[5:8, 4:9, 4:8] = 2
    image = sitk.GetImageFromArray(truth)
    spacing = np.linalg.norm(ijkToRAS[:3, :3], axis=0)
    image.SetSpacing(spacing)
    image.SetDirection((RAS_TO_LPS @ (ijkToRAS[:3, :3] / spacing)).ravel())
    image.SetOrigin(RAS_TO_LPS @ ijkToRAS[:3, 3])
    path = tmp_path / "segmentation.nrrd"
    sitk.WriteImage(image, str(path), True)
    return volume, truth, path


def segments(node) -> list:
    segmentation = node.GetSegmentation()
    return [segmentation.GetSegment(segmentation.GetNthSegmentID(i)) for i in range(segmentation.GetNumberOfSegments())]


def segment_array(node, name, volume) -> np.ndarray:
    import slicer

    segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(name)
    assert segment_id, f"no segment named {name!r}"
    return slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, volume)


def test_import_names_colours_terminology_voxels_and_geometry(mrml, case):
    volume, truth, path = case
    before = mrml.nodeIds()
    node = importLabelmapToSegmentation(path, LABELS, volume)
    added = mrml.nodeIds() - before
    assert added == {node.GetID(), node.GetDisplayNode().GetID()}  # temporary labelmap and colour table are gone
    assert node.GetName() == "T1 oblique segmentation"

    found = segments(node)
    assert [s.GetName() for s in found] == [label["name"] for label in LABELS]
    for segment, label in zip(found, LABELS):
        assert np.allclose(segment.GetColor(), label["color"])
        tag = vtk.reference("")  # the tag the glue sets is what Slicer's terminology accessor reads
        assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
        assert str(tag) == segment.GetTerminology() == terminologyEntry(label)
    assert found[1].GetTerminology() == EMPTY_TERMINOLOGY  # no invented codes
    assert "SCT^5976000^Hippocampus" in found[0].GetTerminology()

    assert np.array_equal(segment_array(node, "Anterior hippocampus", volume), truth == 1)
    assert np.array_equal(segment_array(node, "Posterior hippocampus", volume), truth == 2)
    assert not segment_array(node, "Not found", volume).any()  # an absent label still gets its (empty) segment

    import slicer

    reference = node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    assert reference is volume
    geometry = node.GetSegmentation().GetConversionParameter("Reference image geometry")
    numbers = [float(v) for v in geometry.split(";")[:16]]
    assert np.allclose(np.reshape(numbers, (4, 4)), ijkToRASArray(volume))


def test_terminology_copy_matches_the_engine_format():
    """The glue's copy of ``cadcore.io.labelmaps.terminology_entry`` must write exactly what the engine writes."""
    from cadcore.io.labelmaps import terminology_entry

    full = {**HIPPOCAMPUS_TERMINOLOGY, "region": {"scheme": "SCT", "code": "24028007", "meaning": "Right"},
            "context": "My list", "region_context": "My regions"}
    for label in [*LABELS, {"value": 4, "name": "x", "terminology": full}]:
        assert terminologyEntry(label) == terminology_entry(label)
    with pytest.raises(ValueError):
        terminologyEntry({"name": "bad", "terminology": {"category": HIPPOCAMPUS_TERMINOLOGY["category"]}})


def test_existing_segment_of_the_same_name_is_kept(mrml, case):
    import slicer

    volume, truth, path = case
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "My edits")
    node.CreateDefaultDisplayNodes()
    old_id = node.GetSegmentation().AddEmptySegment("", "Anterior hippocampus", [0.0, 0.0, 1.0])
    manual = np.zeros_like(truth)
    manual[0, 0:2, 0:3] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(manual, node, old_id, volume)

    assert importLabelmapToSegmentation(path, LABELS, volume, node) is node
    assert [s.GetName() for s in segments(node)] == ["Anterior hippocampus", "Anterior hippocampus (2)",
                                                     "Posterior hippocampus", "Not found"]
    assert node.GetSegmentation().GetNthSegmentID(0) == old_id
    assert np.allclose(node.GetSegmentation().GetSegment(old_id).GetColor(), [0.0, 0.0, 1.0])
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(node, old_id, volume), manual)  # intact
    assert np.array_equal(segment_array(node, "Anterior hippocampus (2)", volume), truth == 1)

    importLabelmapToSegmentation(path, LABELS, volume, node)  # a second run: (3), and (2) for the others
    assert [s.GetName() for s in segments(node)][4:] == ["Anterior hippocampus (3)", "Posterior hippocampus (2)",
                                                         "Not found (2)"]


def test_overwrite_replaces_segments_of_the_same_name(mrml, case):
    volume, truth, path = case
    node = importLabelmapToSegmentation(path, LABELS, volume)
    node.GetSegmentation().AddEmptySegment("", "Kept", [1.0, 1.0, 0.0])
    importLabelmapToSegmentation(path, LABELS, volume, node, overwrite=True)
    assert [s.GetName() for s in segments(node)] == ["Kept", *(label["name"] for label in LABELS)]
    assert np.array_equal(segment_array(node, "Anterior hippocampus", volume), truth == 1)


def test_unique_segment_name():
    assert uniqueSegmentName("Lesion", []) == "Lesion"
    assert uniqueSegmentName("Lesion", ["Lesion", "Lesion (2)"]) == "Lesion (3)"


def test_new_segmentation_goes_under_the_volume_study(mrml, case):
    import slicer

    volume, _, path = case
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "MR brain")
    volume_item = sh.GetItemByDataNode(volume) or sh.CreateItem(study, volume)
    sh.SetItemParent(volume_item, study)
    node = importLabelmapToSegmentation(path, LABELS, volume)
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study


def test_volume_without_study_leaves_hierarchy_alone(mrml, case):
    import slicer

    volume, _, path = case
    node = importLabelmapToSegmentation(path, LABELS, volume)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    item = sh.GetItemByDataNode(node)
    assert not item or sh.GetItemParent(item) == sh.GetSceneItemID()


def test_failed_import_leaves_no_nodes_and_no_segments(mrml, case, tmp_path):
    volume, _, path = case
    before = mrml.nodeIds()
    with pytest.raises(RuntimeError, match="cannot read"):
        importLabelmapToSegmentation(tmp_path / "missing.nrrd", LABELS, volume)
    assert mrml.nodeIds() == before

    node = importLabelmapToSegmentation(path, LABELS, volume)
    names = [s.GetName() for s in segments(node)]
    before = mrml.nodeIds()
    bad_colour = [{**LABELS[0], "color": [255, 0, 0]}]
    with pytest.raises(ValueError, match="color"):
        importLabelmapToSegmentation(path, bad_colour, volume, node)
    corrupt = tmp_path / "corrupt.nrrd"
    corrupt.write_bytes(b"NRRD0004\ntype: nonsense\n\n")
    with pytest.raises(RuntimeError):
        importLabelmapToSegmentation(corrupt, LABELS, volume, node)
    assert mrml.nodeIds() == before
    assert [s.GetName() for s in segments(node)] == names
