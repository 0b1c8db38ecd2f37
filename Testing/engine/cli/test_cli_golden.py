"""Golden outputs of the ``cad`` command: the engine's layout may change, what a user gets may not.

``cad segment``, ``cad classify`` and ``cad evaluate`` run on the sample cases shipped in the repository (plus an
oblique, anisotropic, LPS-stored copy of one) with the shipped models, and every output is compared with
``golden/cli_reference.json``, recorded before the engine was split into subpackages: labels byte for byte (a sha256
of the voxels and the exact geometry), probabilities and heatmaps byte for byte, classification probabilities and
evaluation scores exactly, and every JSON document field for field (timings only by name, paths by file name).
Float outputs are compared bit for bit, so the run is pinned to one thread (the reference was recorded on this
project's x86-64 CPU machines; another instruction set may round differently and need a re-recording).

Re-record only for an intended change of output: ``CAD_RECORD_GOLDEN=1 pytest Testing/engine/cli/test_cli_golden.py``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.cli import main

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "sample_data" / "hippocampus"
REFERENCE = Path(__file__).parent / "golden" / "cli_reference.json"
RECORD = os.environ.get("CAD_RECORD_GOLDEN") == "1"
VOLATILE = {"seconds", "total_s", "preprocess_s", "network_s", "postprocess_s", "coarse_s"}


def image_digest(path: Path) -> dict[str, Any]:
    """Voxels (sha256 of the raw array bytes and their type) and the exact geometry of an image file."""
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayViewFromImage(image)
    return {"sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(), "dtype": str(array.dtype),
            "components": image.GetNumberOfComponentsPerPixel(), "size": list(image.GetSize()),
            "spacing": list(image.GetSpacing()), "origin": list(image.GetOrigin()),
            "direction": list(image.GetDirection())}


def segmentation_header(path: Path) -> dict[str, str]:
    """The ``Segment*``/``Segmentation_*`` fields Slicer reads from a ``.seg.nrrd``."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {key: reader.GetMetaData(key) for key in sorted(reader.GetMetaDataKeys()) if key.startswith("Segment")}


def normalised(value: Any, tmp: Path) -> Any:
    """A JSON document with timings reduced to their names and paths to their file names."""
    if isinstance(value, dict):
        return {key: ("<time>" if key in VOLATILE else normalised(item, tmp)) for key, item in value.items()}
    if isinstance(value, list):
        return [normalised(item, tmp) for item in value]
    if isinstance(value, str) and (value.startswith(str(tmp)) or value.startswith(str(REPO))):
        return f"<path>/{Path(value).name}"
    return value


def oblique_copy(source: Path, target: Path) -> Path:
    """The sample case with an oblique, flipped direction and anisotropic spacing, stored as NRRD (LPS on disk)."""
    image = sitk.ReadImage(str(source))
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    image.SetDirection(tuple((rotation @ np.diag([-1.0, 1.0, 1.0])).ravel()))
    image.SetSpacing((0.8, 1.15, 1.4))
    image.SetOrigin((31.5, -12.25, 8.0))
    sitk.WriteImage(image, str(target))
    return target


def run(*args: str) -> None:
    code = main([str(a) for a in args])
    assert code == 0, f"cad {' '.join(map(str, args))} exited {code}"


def outputs(tmp: Path) -> dict[str, Any]:
    """Run every command once and collect what it wrote."""
    case, label = SAMPLES / "imagesTr" / "hippocampus_015.nii.gz", SAMPLES / "labelsTr" / "hippocampus_015.nii.gz"
    found: dict[str, Any] = {}

    seg, prob = tmp / "seg.nii.gz", tmp / "prob.nii.gz"
    run("segment", case, "-m", "hippocampus-unet", "-o", seg, "--probabilities", prob, "--device", "cpu")
    found["segment"] = {"labels": image_digest(seg), "probabilities": image_digest(prob),
                        "sidecar": normalised(json.loads(Path(f"{seg}.json").read_text()), tmp)}

    oblique = oblique_copy(SAMPLES / "imagesTr" / "hippocampus_040.nii.gz", tmp / "oblique.nrrd")
    seg_nrrd = tmp / "oblique.seg.nrrd"
    run("segment", oblique, "-m", "hippocampus-unet", "-o", seg_nrrd, "--device", "cpu")
    found["segment_oblique"] = {"labels": image_digest(seg_nrrd), "header": segmentation_header(seg_nrrd),
                                "sidecar": normalised(json.loads(Path(f"{seg_nrrd}.json").read_text()), tmp)}

    for model, value in (("adrenal-resnet", "1"), ("adrenal-svm", "2"), ("adrenal-rf", "1")):
        result, heatmap = tmp / f"{model}.json", tmp / f"{model}_heat.nii.gz"
        extra = ["--heatmap", heatmap] if model == "adrenal-resnet" else []
        run("classify", case, "-m", model, "--mask", label, "--label", value, "-o", result, "--device", "cpu", *extra)
        found[f"classify_{model}"] = {"result": normalised(json.loads(result.read_text()), tmp)}
        if extra:
            found[f"classify_{model}"]["heatmap"] = image_digest(heatmap)

    report = tmp / "evaluate.json"
    run("evaluate", "-m", "hippocampus-unet", "--data", SAMPLES, "--split", "all", "-o", report, "--device", "cpu")
    found["evaluate_segmentation"] = normalised(json.loads(report.read_text()), tmp)

    rows = tmp / "lesions.csv"
    with open(rows, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "mask", "mask_value"])
        for image in sorted((SAMPLES / "imagesTr").glob("*.nii.gz")):
            for value in (1, 2):
                writer.writerow([image, value - 1, SAMPLES / "labelsTr" / image.name, value])
    report = tmp / "evaluate_classifier.json"
    run("evaluate", "-m", "adrenal-svm", "--data", rows, "--split", "all", "-o", report)
    found["evaluate_classification"] = normalised(json.loads(report.read_text()), tmp)
    return found


@pytest.fixture
def one_thread(monkeypatch):
    """Float sums depend on how work is split across threads: the reference is recorded, and compared, on one."""
    import torch

    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # configure_cpu_threads then leaves the count alone
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_cli_outputs_equal_the_recorded_reference(tmp_path, one_thread):
    found = outputs(tmp_path)
    if RECORD:
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"reference recorded in {REFERENCE}")
    expected = json.loads(REFERENCE.read_text())
    found = json.loads(json.dumps(found))  # tuples to lists, as the reference went through JSON
    assert sorted(found) == sorted(expected)
    for name in expected:
        assert found[name] == expected[name], f"{name} differs from the recorded reference"
