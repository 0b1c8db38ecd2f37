"""The fakes for what slicer-core lacks must keep the real signatures of the installed wheel's ``slicer/util.py``."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import _REAL, FAKE_UTIL_FUNCTIONS, PIP_INSTALL_CALLS


def wheel_util_path() -> Path:
    import slicer

    path = Path(slicer.__file__).with_name("util.py")
    assert "site-packages" in path.parts or "dist-packages" in path.parts, f"not the installed wheel: {path}"
    return path


@pytest.mark.parametrize("name", sorted(FAKE_UTIL_FUNCTIONS))
def test_fake_signature_equals_the_wheel(name):
    real = _REAL[name]
    assert Path(inspect.getsourcefile(real)) == wheel_util_path()
    assert inspect.signature(FAKE_UTIL_FUNCTIONS[name]) == inspect.signature(real)
    tree = ast.parse(wheel_util_path().read_text())  # and the source itself still defines it so
    assert any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


def test_the_real_functions_fail_without_the_application():
    """Why the fakes exist: documented in slicer-testing.md §1, re-checked here on the installed wheel."""
    import slicer

    assert not hasattr(slicer, "app")
    with pytest.raises(AttributeError, match="app"):
        slicer.util.launchConsoleProcess([sys.executable, "-c", "pass"])
    with pytest.raises(ModuleNotFoundError, match="slicer.packaging"):
        slicer.util.pip_install("nothing-to-install")


def test_fakes_behave_like_the_real_functions(fakeSlicerApp):
    import slicer

    process = slicer.util.launchConsoleProcess([sys.executable, "-c", "import sys; print('out'); "
                                                "sys.stderr.write('err\\n'); sys.exit(3)"])
    output = process.stdout.read()
    assert process.wait() == 3 and "out" in output and "err" in output  # stderr merged, like the real one
    with pytest.raises(subprocess.CalledProcessError):
        slicer.util.logProcessOutput(slicer.util.launchConsoleProcess([sys.executable, "-c", "exit(3)"]))
    slicer.util.pip_install("monai>=1.4")
    assert PIP_INSTALL_CALLS == [("monai>=1.4", {})]
    assert slicer.app.temporaryPath
