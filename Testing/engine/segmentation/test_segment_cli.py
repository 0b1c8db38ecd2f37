"""``cad segment`` end to end with a tiny model: outputs, geometry, and every bad input the contract names."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.cli import main


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def blob_image(shape=(20, 24, 18), spacing=(1.0, 1.0, 1.0), seed: int = 0) -> sitk.Image:
    """MR-like volume (K, J, I array) with a bright ellipsoid, so normalisation has something to work on."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape)
    centre = np.array(shape) / 2
    inside = ((k - centre[0]) / 5) ** 2 + ((j - centre[1]) / 7) ** 2 + ((i - centre[2]) / 4) ** 2 < 1
    array = (rng.normal(100, 10, shape) + 80 * inside).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def run_segment(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["segment", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".seg.nrrd", ".mha"])
def test_segment_writes_labelmap_sidecar_on_input_grid(tmp_path, capsys, tiny_model, oblique_image, suffix):
    source = write(oblique_image, tmp_path / "oblique.nrrd")
    output = tmp_path / f"result{suffix}"
    code, out, err = run_segment(capsys, str(source), "-m", str(tiny_model.folder), "-o", str(output),
                                 "--device", "cpu", "--probabilities", str(tmp_path / "prob.nii.gz"))
    assert code == 0, err
    result = sitk.ReadImage(str(output))
    assert_same_grid(result, oblique_image)
    assert set(np.unique(sitk.GetArrayViewFromImage(result))) <= {0, 1, 2}
    probabilities = sitk.ReadImage(str(tmp_path / "prob.nii.gz"))
    assert probabilities.GetNumberOfComponentsPerPixel() == 3
    assert_same_grid(probabilities, oblique_image)
    total = sitk.GetArrayViewFromImage(probabilities).sum(-1)
    assert np.allclose(total, 1.0, atol=1e-3)
    sidecar = json.loads(Path(f"{output}.json").read_text())
    assert sidecar["model"] == tiny_model.id
    assert [label["name"] for label in sidecar["labels"]] == ["anterior", "posterior"]
    assert sidecar["geometry"]["spacing"] == pytest.approx(list(oblique_image.GetSpacing()))
    assert "mL" in out and str(output) in out


def test_segment_with_resampling_keeps_grid(tmp_path, capsys, tiny_model):
    """Anisotropic input (model works at 1 mm): resampled internally, result back on the input grid."""
    image = blob_image(shape=(10, 24, 18), spacing=(0.8, 1.3, 2.4))
    image.SetOrigin((3.0, -7.5, 12.0))
    source = write(image, tmp_path / "aniso.nii.gz")
    output = tmp_path / "aniso_seg.nii.gz"
    code, _, err = run_segment(capsys, str(source), "-m", str(tiny_model.folder), "-o", str(output), "--device", "cpu")
    assert code == 0, err
    assert_same_grid(sitk.ReadImage(str(output)), sitk.ReadImage(str(source)))


def test_segment_png_overlay(tmp_path, capsys, tiny_model):
    source = write(blob_image(), tmp_path / "blob.nii.gz")
    png = tmp_path / "overlay.png"
    code, out, err = run_segment(capsys, str(source), "-m", str(tiny_model.folder), "-o", str(tmp_path / "s.nii.gz"),
                                 "--png", str(png), "--device", "cpu")
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- bad inputs: exit 2, one line on stderr naming the file, nothing written ------------------------------------


def bad_input_files(tmp_path: Path) -> dict[str, Path]:
    good = write(blob_image(), tmp_path / "good.nii.gz")
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    flat = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(30, 30)).astype(np.float32))
    four_d = sitk.JoinSeries([blob_image(seed=s) for s in range(3)])
    nan_array = sitk.GetArrayFromImage(blob_image())
    nan_array[3, 4, 5] = np.nan
    zeros = sitk.GetImageFromArray(np.zeros((12, 12, 12), np.float32))
    return {
        "missing": tmp_path / "does_not_exist.nii.gz",
        "truncated": truncated,
        "2d": write(flat, tmp_path / "flat.nii.gz"),
        "4d": write(four_d, tmp_path / "four_d.nii.gz"),
        "nan": write(sitk.GetImageFromArray(nan_array), tmp_path / "nan.nii.gz"),
        "empty": write(zeros, tmp_path / "zeros.nii.gz"),
    }


EXPECTED_WORDS = {"missing": "not found", "truncated": "cannot read", "2d": "3D", "4d": "3D", "nan": "NaN",
                  "empty": "empty"}


@pytest.mark.parametrize("kind", list(EXPECTED_WORDS))
def test_bad_input_volume(tmp_path, capsys, tiny_model, kind):
    source = bad_input_files(tmp_path)[kind]
    output = tmp_path / "out" / "seg.nii.gz"
    output.parent.mkdir()
    code, _, err = run_segment(capsys, str(source), "-m", str(tiny_model.folder), "-o", str(output))
    assert code == 2
    assert err.count("\n") == 1 and str(source) in err and EXPECTED_WORDS[kind] in err, err
    assert list(output.parent.iterdir()) == []


def test_unknown_model_id(tmp_path, capsys):
    source = write(blob_image(), tmp_path / "in.nii.gz")
    code, _, err = run_segment(capsys, str(source), "-m", "no-such-model", "-o", str(tmp_path / "o.nii.gz"))
    assert code == 2 and "no-such-model" in err and "unknown model" in err and err.count("\n") == 1
    assert not (tmp_path / "o.nii.gz").exists()


def test_weights_sha256_mismatch_is_refused(tmp_path, capsys, tiny_model):
    weights = tiny_model.weights_path
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor's bytes: still a valid file, different hash
    weights.write_bytes(bytes(data))
    source = write(blob_image(), tmp_path / "in.nii.gz")
    code, _, err = run_segment(capsys, str(source), "-m", str(tiny_model.folder), "-o", str(tmp_path / "o.nii.gz"))
    assert code == 2 and "sha256 mismatch" in err and str(weights) in err and err.count("\n") == 1
    assert not (tmp_path / "o.nii.gz").exists()


def test_existing_output_needs_force(tmp_path, capsys, tiny_model):
    source = write(blob_image(), tmp_path / "in.nii.gz")
    output = tmp_path / "o.nii.gz"
    output.write_bytes(b"precious")
    code, _, err = run_segment(capsys, str(source), "-m", str(tiny_model.folder), "-o", str(output))
    assert code == 2 and "--force" in err and str(output) in err
    assert output.read_bytes() == b"precious"
    code, _, err = run_segment(capsys, str(source), "-m", str(tiny_model.folder), "-o", str(output), "--force",
                               "--device", "cpu")
    assert code == 0, err
    assert output.read_bytes() != b"precious"


def test_cli_exit_code_in_a_real_process(tmp_path):
    """The console entry point really exits 2 with one line (not only main()'s return value)."""
    completed = subprocess.run([sys.executable, "-m", "cadcore", "segment", str(tmp_path / "nope.nii.gz"), "-m",
                                "no-such-model", "-o", str(tmp_path / "o.nii.gz")], capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "no-such-model" in completed.stderr
    assert not (tmp_path / "o.nii.gz").exists()


def test_gzip_of_garbage_is_a_one_line_error(tmp_path, capsys, tiny_model):
    source = tmp_path / "garbage.nii.gz"
    source.write_bytes(gzip.compress(b"not an image at all" * 10))
    code, _, err = run_segment(capsys, str(source), "-m", str(tiny_model.folder), "-o", str(tmp_path / "o.nii.gz"))
    assert code == 2 and str(source) in err and err.count("\n") == 1
