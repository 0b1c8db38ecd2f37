"""CADExtensionLib.selftests: how a module file's ``<Module>Test`` finds and runs the tests in ``Testing/Python``
(the delegation Reload and Test goes through), on a stand-in module folder. The real modules' test classes need the
Slicer application; the static suite checks that each module file delegates with the right names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from CADExtensionLib.selftests import loadModuleTest, moduleTestFolder, runModuleTest

NAME = "StandInModuleTest"
TEST_MODULE = '''
import unittest

RUNS = []


class StandInModuleTest(unittest.TestCase):
    def runTest(self, **kwargs):
        RUNS.append(({version!r}, getattr(self, "messageDelay", None), kwargs))
'''


@pytest.fixture
def moduleFile(tmp_path, monkeypatch) -> Path:
    """A module folder with ``StandIn.py`` and ``Testing/Python/StandInModuleTest.py``; sys.path and sys.modules are
    restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, NAME, raising=False)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a rewrite within the same second must not read a stale .pyc
    (tmp_path / "StandIn.py").write_text("")
    (tmp_path / "Testing" / "Python").mkdir(parents=True)
    (tmp_path / "Testing" / "Python" / f"{NAME}.py").write_text(TEST_MODULE.format(version="first"))
    yield tmp_path / "StandIn.py"
    sys.modules.pop(NAME, None)


def test_run_delegates_with_the_message_delay_and_arguments(moduleFile):
    assert moduleTestFolder(str(moduleFile)) == str(moduleFile.parent / "Testing" / "Python")
    runModuleTest(str(moduleFile), NAME, 25, extra=1)
    assert sys.modules[NAME].RUNS == [("first", 25, {"extra": 1})]
    runModuleTest(str(moduleFile), NAME)  # reloaded: a fresh RUNS
    assert sys.modules[NAME].RUNS == [("first", None, {})]


def test_an_edited_test_runs_as_edited(moduleFile):
    """Reload and Test reloads the module file only: the test module is reloaded here, so edits take effect."""
    first = loadModuleTest(str(moduleFile), NAME)
    (moduleFile.parent / "Testing" / "Python" / f"{NAME}.py").write_text(TEST_MODULE.format(version="second one"))
    runModuleTest(str(moduleFile), NAME)
    assert sys.modules[NAME] is first and first.RUNS == [("second one", None, {})]


def test_a_module_of_the_same_name_elsewhere_is_not_used(moduleFile, tmp_path_factory):
    """A test module of that name imported from another folder (another checkout, say) is not the one run."""
    import importlib

    other = tmp_path_factory.mktemp("elsewhere")
    (other / f"{NAME}.py").write_text(TEST_MODULE.format(version="elsewhere"))
    sys.path.insert(0, str(other))
    elsewhere = importlib.import_module(NAME)
    runModuleTest(str(moduleFile), NAME)
    assert Path(sys.modules[NAME].__file__).parent == moduleFile.parent / "Testing" / "Python"
    assert sys.modules[NAME].RUNS == [("first", None, {})] and elsewhere.RUNS == []


def test_missing_tests_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="the module's tests are not installed"):
        runModuleTest(str(tmp_path / "Nothing.py"), "NothingModuleTest")
