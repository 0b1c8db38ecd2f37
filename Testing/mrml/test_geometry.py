"""Volume export and geometry on real MRML: oblique, anisotropic IJKToRAS → NRRD → SimpleITK, RAS→LPS explicit;
and the Slicer pitfalls we guard against (``itkImageFromVolume`` origin, ``AddEmptySegment`` argument order)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CADExtensionLib.volumes import exportVolumeToFile, ijkToRASArray, volumeGeometry

from .conftest import REPO

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def rotation(degrees: float, axis) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def oblique_ijk_to_ras(spacing=(0.7, 1.1, 2.5), origin=(100.0, 50.0, -40.0)) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation(20, (1, 2, 3)) @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


@pytest.fixture
def oblique_volume(mrml):
    import slicer

    rng = np.random.default_rng(1)
    array = rng.normal(100, 20, size=(9, 13, 11)).astype(np.float32)  # (K, J, I)
    ijkToRAS = oblique_ijk_to_ras()
    node = slicer.util.addVolumeFromArray(array, ijkToRAS, "oblique")
    return node, array, ijkToRAS


def test_export_keeps_oblique_anisotropic_geometry_in_lps(oblique_volume, tmp_path):
    node, array, ijkToRAS = oblique_volume
    path = exportVolumeToFile(node, tmp_path / "input.nrrd")
    assert b"encoding: raw" in path.read_bytes()[:1000]  # uncompressed, as the engine's input should be
    image = sitk.ReadImage(str(path))
    spacing = np.linalg.norm(ijkToRAS[:3, :3], axis=0)
    direction_lps = RAS_TO_LPS @ (ijkToRAS[:3, :3] / spacing)
    origin_lps = RAS_TO_LPS @ ijkToRAS[:3, 3]
    assert image.GetSize() == (11, 13, 9)
    assert np.allclose(image.GetSpacing(), spacing, atol=1e-6)
    assert np.allclose(image.GetOrigin(), origin_lps, atol=1e-6)
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), direction_lps, atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), array)  # (K, J, I) on both sides, no transpose

    geometry = volumeGeometry(node)  # the explicit conversion agrees with the file
    assert geometry.size == image.GetSize()
    assert np.allclose(geometry.spacing, image.GetSpacing(), atol=1e-6)
    assert np.allclose(geometry.origin, image.GetOrigin(), atol=1e-6)
    assert np.allclose(geometry.direction, image.GetDirection(), atol=1e-6)
    assert np.allclose(ijkToRASArray(node), ijkToRAS)


def test_export_adds_no_node_and_refuses_empty_volume(mrml, tmp_path):
    import slicer

    node = slicer.util.addVolumeFromArray(np.zeros((2, 3, 4), np.int16), np.eye(4), "small")
    before = mrml.nodeIds()
    exportVolumeToFile(node, tmp_path / "small.nrrd")
    assert mrml.nodeIds() == before
    empty = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError):
        exportVolumeToFile(empty, tmp_path / "empty.nrrd")
    with pytest.raises(ValueError):
        exportVolumeToFile(node, tmp_path / "volume.unknown-format")


def test_itk_image_from_volume_gets_the_origin_wrong(oblique_volume, tmp_path):
    """Regression for docs/slicer-testing.md §4: why the glue never takes geometry from ``itkImageFromVolume``."""
    if importlib.util.find_spec("itk") is None:
        pytest.skip("slicer.util.itkImageFromVolume needs the 'itk' package, which slicer-core does not ship "
                    "(and the 'dev' extra does not install); nothing to run it with")
    import slicer

    node, _, ijkToRAS = oblique_volume
    itkImage = slicer.util.itkImageFromVolume(node)
    written = sitk.ReadImage(str(exportVolumeToFile(node, tmp_path / "v.nrrd")))
    assert np.allclose(tuple(itkImage.GetOrigin()), ijkToRAS[:3, 3])  # the RAS origin, copied unchanged
    assert not np.allclose(tuple(itkImage.GetOrigin()), written.GetOrigin())  # ... which is wrong in LPS


def test_itk_image_from_volume_hands_itk_the_ras_origin(oblique_volume, monkeypatch):
    """Runs without ``itk``: Slicer's own code up to the ITK call, with ``itk.image_from_vtk_image`` replaced by a
    stub that returns the ``vtkImageData`` it is given. The direction Slicer prepares is flipped to LPS but the
    origin is the RAS one, so no correct ITK conversion can recover the LPS origin from it."""
    import sys
    import types

    import slicer

    monkeypatch.setitem(sys.modules, "itk", types.SimpleNamespace(image_from_vtk_image=lambda image: image))
    node, _, ijkToRAS = oblique_volume
    handed = slicer.util.itkImageFromVolume(node)
    direction = np.array([[handed.GetDirectionMatrix().GetElement(r, c) for c in range(3)] for r in range(3)])
    spacing = np.linalg.norm(ijkToRAS[:3, :3], axis=0)
    assert np.allclose(direction, RAS_TO_LPS @ (ijkToRAS[:3, :3] / spacing))  # LPS direction: correct
    assert np.allclose(handed.GetOrigin(), ijkToRAS[:3, 3])  # RAS origin: the bug
    assert not np.allclose(handed.GetOrigin(), RAS_TO_LPS @ ijkToRAS[:3, 3])


def test_glue_never_calls_slicer_helpers_that_need_the_application_or_get_geometry_wrong():
    """Static guard: no ``saveNode``/``loadVolume``/``itkImageFromVolume``/``launchConsoleProcess``/``pip_install``,
    and no ``qt``/``ctk``/engine import at the top of any glue file. ``pip_install`` is allowed in exactly one file,
    ``dependencies.py``, whose job it is (and whose tests run it through the signature-checked fake)."""
    banned_calls = {"saveNode", "loadVolume", "loadNodeFromFile", "itkImageFromVolume", "launchConsoleProcess",
                    "pip_install"}
    allowed_calls = {"dependencies.py": {"pip_install"}}
    banned_modules = {"qt", "ctk", "torch", "monai", "cadcore", "SimpleITK", "numpy",
                      "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper"}
    files = sorted((REPO / "CADExtension" / "CADExtensionLib").glob("*.py")) + sorted(
        (REPO / "CADSegment" / "CADSegmentLib").glob("*.py")) + sorted(
        (REPO / "CADClassify" / "CADClassifyLib").glob("*.py"))
    assert len(files) >= 11
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr not in banned_calls - allowed_calls.get(path.name, set()), \
                    f"{path.name}:{node.lineno} uses {node.attr}"
        for node in tree.body:  # top level only: SegmentationLogic imports cadcore lazily inside a function
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned_modules and name not in banned_modules, \
                    f"{path.name}:{node.lineno} imports {name}"


def test_add_empty_segment_first_argument_is_the_id(mrml):
    """``AddEmptySegment("lesion")`` names nothing: the name is auto-generated; pass ``("", "lesion")``."""
    segmentation_node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation = segmentation_node.GetSegmentation()
    by_id = segmentation.AddEmptySegment("lesion")
    assert by_id == "lesion"
    assert segmentation.GetSegment(by_id).GetName() != "lesion"
    by_name = segmentation.AddEmptySegment("", "lesion")
    assert by_name != "lesion"
    assert segmentation.GetSegment(by_name).GetName() == "lesion"


def test_module_folders_are_importable_as_slicer_puts_them():
    import CADClassifyLib
    import CADExtensionLib
    import CADSegmentLib

    assert Path(CADExtensionLib.__file__).parent == REPO / "CADExtension" / "CADExtensionLib"
    assert Path(CADSegmentLib.__file__).parent == REPO / "CADSegment" / "CADSegmentLib"
    assert Path(CADClassifyLib.__file__).parent == REPO / "CADClassify" / "CADClassifyLib"
    assert set(CADExtensionLib.__all__) <= set(dir(CADExtensionLib))
    assert set(CADClassifyLib.__all__) <= set(dir(CADClassifyLib))
