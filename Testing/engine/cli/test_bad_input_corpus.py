"""The reliability contract, input by input: every entry of the corpus (``bad_inputs.CORPUS``, filled by
``bad_inputs*.py``) is refused with exit 2
and exactly one line on stderr (file descriptor 2, so native libraries' own prints count) that names the file and the
problem, no traceback, nothing written or changed in its folder (the user registry included), and the process's peak
memory still under a bound (the memory-hostile entries are also measured alone, in subprocesses, in
``io/test_reading_checks.py`` and ``registry/test_registry_security.py``).

docs/reliability.md lists the same inputs in a table.
"""

from __future__ import annotations

import hashlib
import os
import resource
from pathlib import Path

import bad_inputs_commands  # noqa: F401 (registers its entries)
import bad_inputs_hostile  # noqa: F401 (registers its entries)
import pytest
from bad_inputs import CORPUS, Models

from cadcore.cli import main
from conftest import make_tiny_classification_package, make_tiny_segmentation_package


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    root = tmp_path_factory.mktemp("corpus-models")
    return Models(make_tiny_segmentation_package(root / "tiny-unet").folder,
                  make_tiny_classification_package(root / "tiny-resnet").folder)


def snapshot(*folders: Path) -> dict[str, str]:
    """Every entry below the folders (hidden ones included) with the sha256 of each file's bytes."""
    found = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs:
                found[os.path.join(root, name)] = "dir"
            for name in files:
                path = os.path.join(root, name)
                found[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


PEAK_MEMORY_BOUND_KIB = 3 * 1024 * 1024  # 3 GiB for the whole test process: torch and the tiny models need ~1


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 60


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_input_is_one_line_and_changes_nothing(name, tmp_path, capfd, models, monkeypatch):
    registry = tmp_path / "user-models"
    registry.mkdir()
    monkeypatch.setenv("CAD_MODELS", str(registry))
    work = tmp_path / "work"
    work.mkdir()
    refusal = CORPUS[name](work, models)
    before = snapshot(work, registry, models.segmentation, models.classification)
    capfd.readouterr()
    code = main(refusal.argv)
    out, err = capfd.readouterr()
    assert code == 2, (name, out, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and str(refusal.names) in err and refusal.word in err, err
    assert snapshot(work, registry, models.segmentation, models.classification) == before
    # peak memory bounded: a refusal that allocated what a lying header or card claims (4-43 GB) would show here
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < PEAK_MEMORY_BOUND_KIB


# --- unusual but valid inputs: each must succeed, on the input's exact grid ----------------------------------------


def unusual_inputs(folder: Path) -> dict[str, Path]:
    """Valid inputs a real user has: awkward names, storage orders, formats and pixel types."""
    import numpy as np
    import SimpleITK as sitk
    from bad_inputs import blob, write

    from conftest import oblique_direction

    oblique = blob()
    oblique.SetDirection(oblique_direction())
    oblique.SetOrigin((-40.5, 12.25, 80.0))
    integer = sitk.Cast(sitk.RescaleIntensity(blob(), 0, 4000), sitk.sitkUInt16)
    ct_like = sitk.Cast(sitk.RescaleIntensity(blob(), -1024, 3071), sitk.sitkInt16)
    return {
        "a path with spaces": write(blob(), folder / "my scans" / "patient one.nii.gz"),
        "a non-ASCII path": write(blob(), folder / "Ünïcødé ɸ" / "tête 脑.nrrd"),
        "an oblique, flipped direction": write(oblique, folder / "oblique.nrrd"),
        "anisotropic voxels stored as .mha": write(sitk.Resample(blob(), [16, 14, 5], sitk.Transform(),
                                                                 sitk.sitkLinear, (0, 0, 0), (1.0, 1.0, 3.6),
                                                                 (1, 0, 0, 0, 1, 0, 0, 0, 1)), folder / "thick.mha"),
        "a detached-header NRRD": write(blob(), folder / "detached.nhdr"),
        "a MetaImage header with its raw file": write(blob(), folder / "split.mhd"),
        "unsigned 16-bit voxels": write(integer, folder / "uint16.nii.gz"),
        "signed CT-like voxels in an uncompressed .nii": write(ct_like, folder / "ct.nii"),
        "a volume of one value but one voxel": write(sitk.GetImageFromArray(
            np.pad(np.ones((1, 1, 1), np.float32), ((5, 6), (6, 7), (7, 8)))), folder / "speck.nii.gz"),
    }


UNUSUAL = ["a path with spaces", "a non-ASCII path", "an oblique, flipped direction",
           "anisotropic voxels stored as .mha", "a detached-header NRRD", "a MetaImage header with its raw file",
           "unsigned 16-bit voxels", "signed CT-like voxels in an uncompressed .nii",
           "a volume of one value but one voxel"]


@pytest.mark.parametrize("kind", UNUSUAL)
def test_unusual_valid_input_succeeds_on_its_own_grid(kind, tmp_path, capfd, models):
    import SimpleITK as sitk

    source = unusual_inputs(tmp_path / "in")[kind]
    output = tmp_path / "out" / "labels.seg.nrrd"
    output.parent.mkdir()
    assert main(["segment", str(source), "-m", str(models.segmentation), "-o", str(output), "--device", "cpu"]) == 0
    assert "Traceback" not in capfd.readouterr().err
    image, labels = sitk.ReadImage(str(source)), sitk.ReadImage(str(output))
    assert labels.GetSize() == image.GetSize()
    assert labels.GetSpacing() == pytest.approx(image.GetSpacing(), abs=1e-5)
    assert labels.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-4)
    assert labels.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-6)


def test_the_reliability_page_lists_every_corpus_entry():
    """docs/reliability.md's table is the corpus: an entry added here must be documented there."""
    page = (Path(__file__).resolve().parents[3] / "docs" / "reliability.md").read_text()
    missing = [name for name in CORPUS if f"| {name} |" not in page]
    assert missing == []
