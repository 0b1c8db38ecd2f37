"""``cad`` leaves without the interpreter's teardown (:func:`cadcore.cli.exit_now`), yet does everything exit must do.

Each case runs the real entry point in a fresh interpreter: what is checked is what a caller (Slicer, a script, a
scheduler) sees after the process is gone: the exit code, every byte of stdout and stderr, the files, the
``atexit`` functions run, and a still-running thread allowed to finish.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[3]
ENGINE = REPO / "CADExtension"


def run_python(code: str, *args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ENGINE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=300)


def test_the_console_script_and_python_m_use_the_fast_exit():
    assert 'cad = "cadcore.cli:run"' in (REPO / "pyproject.toml").read_text().splitlines()  # tomllib: 3.11+
    assert "run()" in (ENGINE / "cadcore" / "__main__.py").read_text()


def test_exit_functions_run_and_output_is_complete(tmp_path):
    """A model card (7 kB of JSON) through a file and a pipe arrives whole, and an ``atexit`` function still runs
    (temporary folders, logging and multiprocessing rely on them)."""
    marker = tmp_path / "atexit-ran"
    code = ("import atexit, pathlib, sys\n"
            f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
            "sys.argv = ['cad'] + sys.argv[1:]\n"
            "from cadcore.cli import run\nrun()")
    done = run_python(code, "models", "show", "hippocampus-unet")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) and marker.read_text() == "yes"
    marker.unlink()
    with open(tmp_path / "listing.json", "w") as listing:
        done = run_python(code, "models", "show", "hippocampus-unet", stdout=listing)
    assert done.returncode == 0 and json.loads((tmp_path / "listing.json").read_text()) == json.loads(
        run_python(code, "models", "show", "hippocampus-unet").stdout)
    assert marker.read_text() == "yes"


def test_the_exit_code_and_the_error_line_survive(tmp_path):
    missing = tmp_path / "absent.nii.gz"
    done = run_python("import sys\nsys.argv = ['cad'] + sys.argv[1:]\nfrom cadcore.cli import run\nrun()",
                      "segment", str(missing), "-m", "hippocampus-unet", "-o", str(tmp_path / "seg.nii.gz"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and str(missing) in done.stderr


def test_a_running_thread_finishes_before_the_process_leaves(tmp_path):
    """With a non-daemon thread still at work the interpreter exits normally, which waits for it."""
    written = tmp_path / "late.txt"
    code = ("import pathlib, sys, threading, time\n"
            f"threading.Thread(target=lambda: (time.sleep(0.5), pathlib.Path({str(written)!r}).write_text('done')))"
            ".start()\n"
            "from cadcore.cli import exit_now\nexit_now(3)")
    done = run_python(code)
    assert done.returncode == 3 and written.read_text() == "done"


def test_a_segmentation_through_the_module_entry_point_is_whole(tmp_path):
    """``python -m cadcore segment`` (Slicer's call): exit 0, the printed summary, and a label map and sidecar that
    read back completely."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 20, (20, 24, 22)).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 1.0))
    source, output = tmp_path / "mr.nii.gz", tmp_path / "seg.nii.gz"
    sitk.WriteImage(image, str(source))
    env = {**os.environ, "PYTHONPATH": str(ENGINE)}
    done = subprocess.run([sys.executable, "-m", "cadcore", "segment", str(source), "-m", "hippocampus-unet", "-o",
                           str(output), "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"segmentation: {output}" in done.stdout
    labels = sitk.ReadImage(str(output))
    assert labels.GetSize() == image.GetSize()
    assert json.loads(Path(f"{output}.json").read_text())["model"] == "hippocampus-unet"
