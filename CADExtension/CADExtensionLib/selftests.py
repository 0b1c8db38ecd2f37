"""How a module file's ``<Module>Test`` reaches the module's tests in ``Testing/Python``.

Slicer runs a module's self-test through the class named ``<Module>Test`` in the module file: Reload and Test and
``slicer.selfTests["<Module>"]`` (``ScriptedLoadableModule.runTest``) look it up by that name. The tests themselves
are in ``<module folder>/Testing/Python/<Module>ModuleTest.py`` (Slicer's scripted-module layout), where ctest
registers them and where they do not lengthen the module file; the module file's class only delegates, through
:func:`runModuleTest`. The packaged extension copies ``Testing/Python`` beside the module file, so the same relative
path works in a checkout and in an installed extension.

Standard library only, like the rest of the glue (no Qt), so it is tested on slicer-core.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any


def moduleTestFolder(moduleFile: str) -> str:
    """``Testing/Python`` beside the module file ``moduleFile`` (pass the module's ``__file__``)."""
    return os.path.join(os.path.dirname(os.path.abspath(moduleFile)), "Testing", "Python")


def loadModuleTest(moduleFile: str, name: str) -> ModuleType:
    """The test module ``name`` from :func:`moduleTestFolder`, imported, or reloaded when already imported.

    Reloading matters for Reload and Test: Slicer reloads the module file only, and a test edited since the last
    run would otherwise run as it was. Raises FileNotFoundError when the file is not there (a build without tests).
    """
    folder = moduleTestFolder(moduleFile)
    path = os.path.join(folder, f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the module's tests are not installed")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = sys.modules.get(name)
    if module is not None and os.path.abspath(getattr(module, "__file__", "") or "") == os.path.abspath(path):
        return importlib.reload(module)
    sys.modules.pop(name, None)  # a module of that name from elsewhere: import this one instead
    return importlib.import_module(name)


def runModuleTest(moduleFile: str, name: str, messageDelay: int | None = None, **kwargs: Any) -> None:
    """Run the test case class ``name`` of the test module ``name`` (its ``runTest``, which runs every test).

    ``messageDelay`` (milliseconds of each ``delayDisplay``) and ``kwargs`` are what Slicer gave the module file's
    ``<Module>Test``; they are passed on unchanged. A failing or skipped test raises, as if it ran in the module file.
    """
    testCase = getattr(loadModuleTest(moduleFile, name), name)()
    if messageDelay is not None:
        testCase.messageDelay = messageDelay
    testCase.runTest(**kwargs)
