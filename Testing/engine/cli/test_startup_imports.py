"""Start-up: what ``cad`` imports before it does any work (issue 19; timings in docs/benchmarks.md).

Each check runs in a fresh interpreter, since this test process has long since imported everything. ``import
cadcore.cli`` (every command's start) must stay free of the heavy packages, and ``cad segment`` with a model
package imports no MONAI at all (``import monai`` loads every MONAI submodule, ~0.7 s), nor what MONAI would load
eagerly (matplotlib, scipy.signal/stats, scikit-learn): about 2 s of each Slicer Apply and batch case on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ENGINE = Path(__file__).resolve().parents[3] / "CADExtension"
HEAVY = ("monai", "matplotlib", "fastapi", "torch", "scipy", "sklearn", "pydicom")
NOT_FOR_SEGMENT = ("matplotlib", "sklearn", "scipy.signal", "scipy.stats", "fastapi")


def loaded_after(code: str) -> list[str]:
    """The module names loaded once ``code`` has run in a fresh interpreter using this worktree's engine."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ENGINE), os.environ.get("PYTHONPATH", "")])}
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_cli_loads_no_heavy_package():
    modules = loaded_after("import cadcore.cli")
    assert not [m for m in modules if m.split(".")[0] in HEAVY]


def test_segment_leaves_out_what_it_does_not_use(tmp_path, tiny_model):
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 20, (20, 24, 22)).astype(np.float32))
    source, output = tmp_path / "mr.nii.gz", tmp_path / "seg.nii.gz"
    sitk.WriteImage(image, str(source))
    modules = loaded_after(f"from cadcore.cli import main\nassert main(['segment', {str(source)!r}, '-m', "
                           f"{str(tiny_model.folder)!r}, '-o', {str(output)!r}, '--device', 'cpu']) == 0")
    assert output.is_file()
    assert not [m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_FOR_SEGMENT)]
    # the engine's DynUNet and sliding window (equal to MONAI's, Testing/engine/registry/test_dynunet.py and
    # Testing/engine/segmentation/test_windows.py): no MONAI at all for a package's segmentation
    assert not [m for m in modules if m.split(".")[0] == "monai"]


def test_full_monai_on_request_and_the_block_is_lifted_after_the_import(monkeypatch):
    """``CAD_FULL_MONAI=1`` imports MONAI whole (escape hatch for a fallback bundle needing what the lean import
    leaves out); without it, the blocked packages still import normally once MONAI is in."""
    lean = loaded_after("from cadcore.registry.monai_import import import_monai\nimport_monai()\nimport sklearn")
    assert "sklearn" in lean and "monai" in lean  # the block is gone after MONAI's import
    assert "scipy.stats" not in loaded_after("from cadcore.registry.monai_import import import_monai\nimport_monai()")
    monkeypatch.setenv("CAD_FULL_MONAI", "1")
    whole = loaded_after("from cadcore.registry.monai_import import import_monai\nimport_monai()")
    assert "matplotlib" in whole or "scipy.stats" in whole  # what MONAI loads eagerly when nothing is blocked
