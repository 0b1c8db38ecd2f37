"""Headers are checked before voxels are read, and native libraries stay quiet (issue 14, items 2 and 6).

Every bad input is a real file on disk driven through ``cad segment``: exit 2, exactly one stderr line naming the
file, nothing written. A lying header must be refused in milliseconds without allocating what it claims.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from peak_memory import TESTING

from cadcore.errors import CadError
from cadcore.io.headers import check_geometry
from cadcore.io.native import quiet_native
from conftest import run_segment_fd

ENGINE = Path(__file__).resolve().parents[3] / "CADExtension"


def volume(shape: tuple[int, int, int] = (12, 20, 16), dtype=np.float32) -> sitk.Image:
    """A small non-constant volume (K, J, I) with 1 mm spacing."""
    rng = np.random.default_rng(3)
    return sitk.GetImageFromArray(rng.normal(100, 20, size=shape).astype(dtype))


def write(image: sitk.Image, path: Path, compress: bool = False) -> Path:
    sitk.WriteImage(image, str(path), compress)
    return path


def patched_nifti(path: Path, **fields: tuple[int, str, tuple]) -> Path:
    """An uncompressed NIfTI-1 of :func:`volume` with header fields overwritten: name=(offset, format, values)."""
    write(volume(), path)
    data = bytearray(path.read_bytes())
    for offset, fmt, values in fields.values():
        data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(bytes(data))
    return path


def claims_1024_cubed(path: Path) -> Path:
    """A 4 KiB NIfTI whose header claims 1024³ float32 (4 GiB); gzipped when the name ends in .gz."""
    header = bytearray(patched_nifti(path.with_name("src.nii"), dims=(40, "<8h", (3, 1024, 1024, 1024, 1, 1, 1, 1)))
                       .read_bytes()[:4096])
    path.with_name("src.nii").unlink()
    path.write_bytes(gzip.compress(bytes(header)) if path.name.endswith(".gz") else bytes(header))
    return path



def assert_refused(capfd, model, source: Path, tmp_path: Path, word: str) -> str:
    code, err, out_dir = run_segment_fd(capfd, model, source, tmp_path)
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert f": {source}: " in err and word in err.split(str(source), 1)[1], err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []
    return err


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """kind -> (file on disk, word the one-line error must contain)."""
    nan = float("nan")
    complex_image = sitk.GetImageFromArray((np.ones((8, 9, 10)) + 1j * np.arange(720).reshape(8, 9, 10))
                                           .astype(np.complex64))
    skewed = write(volume(), tmp_path / "skewed_src.mha")
    skewed_text = skewed.read_bytes().replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                                              b"TransformMatrix = 1 0.5 0 0 1 0 0 0 1")
    mha_zero = skewed.read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1")
    raw_mha = write(volume(), tmp_path / "raw_src.mha")
    mhd = write(volume(), tmp_path / "no_data.mhd")
    mhd.with_suffix(".raw").unlink()
    raw_nrrd = write(volume(), tmp_path / "raw_src.nrrd")
    whole_nii = write(volume(), tmp_path / "whole.nii")
    files = {
        "vox_offset 0": (patched_nifti(tmp_path / "vox0.nii", off=(108, "<f", (0.0,))), "vox_offset"),
        "vox_offset 348": (patched_nifti(tmp_path / "vox348.nii", off=(108, "<f", (348.0,))), "vox_offset"),
        "zero spacing": (patched_nifti(tmp_path / "zero_spacing.nii", pixdim=(80, "<f", (0.0,))), "spacing"),
        "NaN spacing": (patched_nifti(tmp_path / "nan_spacing.nii", pixdim=(84, "<f", (nan,))), "spacing"),
        "NaN origin": (patched_nifti(tmp_path / "nan_origin.nii", q=(268, "<f", (nan,)), s=(292, "<f", (nan,))),
                       "origin"),
        "1-bit": (patched_nifti(tmp_path / "binary.nii", type=(70, "<2h", (1, 1))), "1-bit"),
        "non-orthonormal .mha": (tmp_path / "skewed.mha", "orthonormal"),
        "zero spacing .mha": (tmp_path / "zero_spacing.mha", "spacing"),
        "complex .mha": (write(complex_image, tmp_path / "complex.mha"), "components"),  # MetaIO: 2 floats
        "complex .nii": (write(complex_image, tmp_path / "complex.nii"), "complex"),
        "complex .nii.gz": (write(complex_image, tmp_path / "complex.nii.gz", compress=True), "complex"),
        "1024^3 in 4 KiB .nii": (claims_1024_cubed(tmp_path / "huge.nii"), "truncated"),
        "1024^3 in 4 KiB .nii.gz": (claims_1024_cubed(tmp_path / "huge.nii.gz"), "truncated"),
        "truncated .nii": (tmp_path / "cut.nii", "truncated"),
        ".mha with data missing": (tmp_path / "cut.mha", "truncated"),
        ".mhd without its .raw": (mhd, "missing"),
        "raw .nrrd with data missing": (tmp_path / "cut.nrrd", "truncated"),
    }
    files["vox_offset 0 .nii.gz"] = (tmp_path / "vox0.nii.gz", "vox_offset")
    (tmp_path / "vox0.nii.gz").write_bytes(gzip.compress(files["vox_offset 0"][0].read_bytes()))
    directions = b"space directions: (1,0,0) (0,1,0) (0,0,1)"
    for name, replacement, word in (("zero_spacing", b"(1,0,0) (0,0,0) (0,0,1)", "spacing"),
                                    ("nan_spacing", b"(1,0,0) (0,nan,0) (0,0,1)", "space vector"),
                                    ("skewed", b"(1,0,0) (0.5,1,0) (0,0,1)", "orthonormal")):
        files[f"{name} .nrrd"] = (tmp_path / f"{name}.nrrd", word)
        (tmp_path / f"{name}.nrrd").write_bytes(raw_nrrd.read_bytes().replace(directions,
                                                                             b"space directions: " + replacement))
    (tmp_path / "skewed.mha").write_bytes(skewed_text)
    (tmp_path / "zero_spacing.mha").write_bytes(mha_zero)
    (tmp_path / "cut.nii").write_bytes(whole_nii.read_bytes()[:-100])
    (tmp_path / "cut.mha").write_bytes(raw_mha.read_bytes()[:-1000])
    (tmp_path / "cut.nrrd").write_bytes(raw_nrrd.read_bytes()[:-1000])
    return files


def test_bad_headers_are_refused_in_one_line_before_reading(tmp_path, capfd, tiny_model):
    (tmp_path / "inputs").mkdir()
    files = bad_files(tmp_path / "inputs")
    assert len(files) >= 21
    for kind, (path, word) in files.items():
        started = time.perf_counter()
        try:
            assert_refused(capfd, tiny_model, path, tmp_path, word)
        except AssertionError as failure:
            raise AssertionError(f"{kind}: {failure}") from None
        assert time.perf_counter() - started < 5, kind


def test_header_memory_limit(tmp_path, capfd, tiny_model, monkeypatch):
    """Past what memory (or CAD_MAX_VOXELS) allows, the header alone refuses: here a legal, intact volume."""
    source = write(volume(), tmp_path / "fine.nii.gz", compress=True)
    monkeypatch.setenv("CAD_MAX_VOXELS", "1000")
    assert "CAD_MAX_VOXELS" in assert_refused(capfd, tiny_model, source, tmp_path, "too large")
    monkeypatch.delenv("CAD_MAX_VOXELS")
    huge = patched_nifti(tmp_path / "huge.nii", dims=(40, "<8h", (3, 4096, 4096, 4096, 1, 1, 1, 1)))
    assert "memory" in assert_refused(capfd, tiny_model, huge, tmp_path, "too large")  # 256 GiB: past any machine


PEAK_SCRIPT = """
import sys, time
from cadcore.cli import main
from peak_memory import peak_kib
args = ["segment", sys.argv[1], "-m", sys.argv[2], "-o", sys.argv[3]]
assert main([*args[:1], sys.argv[4], *args[2:]]) == 2  # warm-up on a small bad file: lazy imports are done
before = peak_kib()
started = time.perf_counter()
code = main(args)
print(code, time.perf_counter() - started, (peak_kib() - before) / 1024)
"""


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_lying_header_costs_no_memory(tmp_path, tiny_model, name):
    source = claims_1024_cubed(tmp_path / name)
    small = tmp_path / "small_cut.nii"
    small.write_bytes(write(volume(), tmp_path / "small.nii").read_bytes()[:-100])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ENGINE), TESTING])}
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(source), str(tiny_model.folder),
                           str(tmp_path / "seg.nii.gz"), str(small)],
                          capture_output=True, text=True, env=env, timeout=120)
    code, seconds, peak_mib = done.stdout.split()
    assert int(code) == 2 and done.stderr.count("\n") == 2, done.stderr  # the warm-up's line, then ours
    assert "truncated" in done.stderr.splitlines()[1], done.stderr
    assert float(seconds) < 3.0 and float(peak_mib) < 50, done.stdout  # ITK alone would take 4 GiB first
    assert not (tmp_path / "seg.nii.gz").exists()


def test_native_warning_on_refusal_is_one_line_quoting_the_cause(tmp_path, capfd, tiny_model):
    """A non-orthonormal sform: ITK warns ("unexpected scales in sform") on fd 2 and then fails. One line."""
    source = patched_nifti(tmp_path / "skew_sform.nii", q=(252, "<2h", (0, 1)),
                           srow=(280, "<12f", (1, 0.5, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)))
    err = assert_refused(capfd, tiny_model, source, tmp_path, "orthonormal")
    assert "WARNING" not in err and "0x" not in err


def test_native_warning_on_success_prints_nothing_extra(tmp_path, capfd, tiny_model):
    """Scales in the sform that disagree with pixdim: ITK warns on every read, but the file is usable."""
    source = patched_nifti(tmp_path / "scaled sform é.nii", srow=(280, "<12f", (2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0)))
    capfd.readouterr()
    sitk.ReadImage(str(source))  # proof that this file makes ITK print
    assert "unexpected scales in sform" in capfd.readouterr().err
    code, err, out_dir = run_segment_fd(capfd, tiny_model, source, tmp_path)
    assert code == 0, err
    assert "sform" not in err and "WARNING" not in err, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["seg.nii.gz", "seg.nii.gz.json"]


def test_quiet_native_captures_descriptor_2_and_restores_it(capfd):
    with quiet_native() as noise:
        os.write(2, b"WARNING: In itkFoo.cxx, line 12\nFooImageIO (0x55aa01): bad.nii has odd things\n\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    assert noise.informative() == "FooImageIO: bad.nii has odd things"
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # switched back on


def test_quiet_native_restores_descriptor_2_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError), quiet_native():
        os.write(2, b"inside\n")
        raise RuntimeError("boom")
    os.write(2, b"outside\n")
    assert capfd.readouterr().err == "outside\n"


@pytest.mark.parametrize(("spacing", "origin", "direction", "word"), [
    ((1.0, 0.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), "spacing"),
    ((1.0, -2.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), "spacing"),
    ((1.0, float("inf"), 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), "spacing"),
    ((1.0, 1.0, 1.0), (0.0, float("nan"), 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), "origin"),
    ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1.01, 0, 0, 0, 1), "orthonormal"),
    ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0), "direction"),
])
def test_check_geometry_refuses(spacing, origin, direction, word):
    with pytest.raises(CadError, match=word):
        check_geometry((4, 4, 4), spacing, origin, direction, "x.nii")


def test_check_geometry_accepts_oblique_within_tolerance(oblique_image):
    direction = tuple(d + 2e-4 for d in oblique_image.GetDirection())  # rounding in a header: still a rotation
    check_geometry(oblique_image.GetSize(), oblique_image.GetSpacing(), oblique_image.GetOrigin(), direction, "x")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr"])
def test_unusual_but_valid_files_still_segment(tmp_path, capfd, tiny_model, oblique_image, suffix):
    """Paths with spaces and non-ASCII characters, oblique headers, raw (uncompressed) and detached-data formats."""
    folder = tmp_path / "dossier patiënt 北京"
    folder.mkdir()
    source = write(oblique_image, folder / f"T1 scan ü{suffix}", compress=suffix in (".nii.gz", ".nrrd"))
    code, err, out_dir = run_segment_fd(capfd, tiny_model, source, tmp_path)
    assert code == 0, err
    report = json.loads((out_dir / "seg.nii.gz.json").read_text())
    assert report["source"] is None and report["input"] == str(source)
    labels = sitk.ReadImage(str(out_dir / "seg.nii.gz"))
    assert labels.GetSize() == oblique_image.GetSize()
    assert np.allclose(labels.GetDirection(), oblique_image.GetDirection(), atol=1e-5)


def test_scaled_integer_nifti_is_not_mistaken_for_truncated(tmp_path, capfd, tiny_model):
    """scl_slope makes ITK report float voxels for an int16 file: the byte check must use the file's own type."""
    source = write(volume(dtype=np.int16), tmp_path / "scaled.nii")
    data = bytearray(source.read_bytes())
    data[112:120] = struct.pack("<2f", 0.5, 10.0)
    source.write_bytes(bytes(data))
    code, err, _ = run_segment_fd(capfd, tiny_model, source, tmp_path)
    assert code == 0, err


def test_quiet_blocks_in_two_threads_take_turns_and_restore_the_process_state():
    """``cad batch`` reads the next case in a thread while the main thread writes: a block entered while another
    thread's is open must not save that block's "warnings off" and restore it last (nor leave descriptor 2 in the
    other block's closed temporary file)."""
    import threading
    import time

    from cadcore.io.native import quiet_native

    assert sitk.ProcessObject.GetGlobalWarningDisplay()
    stderr_file = os.fstat(2).st_ino
    first_inside, order = threading.Event(), []

    def first() -> None:
        with quiet_native():
            order.append("first in")
            first_inside.set()
            time.sleep(0.3)  # the second thread tries to enter meanwhile
            order.append("first out")

    def second() -> None:
        first_inside.wait()
        with quiet_native():
            order.append("second in")
        order.append("second out")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == ["first in", "first out", "second in", "second out"]
    assert sitk.ProcessObject.GetGlobalWarningDisplay()
    assert os.fstat(2).st_ino == stderr_file  # descriptor 2 is the process's stderr again
