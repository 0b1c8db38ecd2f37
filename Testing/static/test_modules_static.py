"""Static checks of the three Slicer modules and the layer rules (docs/slicer-testing.md §5d, §6), by AST only.

Nothing here imports a module file: they need the Slicer application (qt, ctk, ScriptedLoadableModule). What these
tests prove is structure, the part of Slicer's conventions a typo or a stray import breaks without any other test
noticing; they do not prove that the panels work in Slicer (see README.md, "What CI covers, and what it does not").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = ("CADExtension", "CADSegment", "CADClassify")
LIB_PACKAGES = [REPO / module / f"{module}Lib" for module in MODULES]
ENGINE = REPO / "CADExtension" / "cadcore"
MAX_MODULE_LINES = 450  # "keep each module file around 400 lines": the real work belongs in the Lib packages

# What a layer must never import (the first dotted component, or the full dotted prefix).
HEAVY = ("torch", "monai", "cadcore")  # engine-side: must never be loaded into Slicer's interpreter by a module
QT_LAYER = ("qt", "ctk", "PythonQt", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")
SLICER_SIDE = ("slicer", "vtk", "vtkmodules", "qt", "ctk", "PythonQt", "MRMLCorePython", "__main__")


def module_file(module: str) -> Path:
    return REPO / module / f"{module}.py"


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_names(tree: ast.AST, top_level_only: bool = False) -> list[tuple[str, int]]:
    """Every imported module name with its line: ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a`` and
    ``a.b`` (so ``from slicer import ScriptedLoadableModule`` is seen as ``slicer.ScriptedLoadableModule``)."""
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.module, node.lineno))
            names += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return names


def violations(path: Path, banned: tuple[str, ...], top_level_only: bool = False) -> list[str]:
    """One ``file:line: imports prefix`` per import statement and banned prefix it matches."""
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found = {(line, prefix) for name, line in imported_names(parse(path), top_level_only) for prefix in banned
             if name == prefix or name.startswith(prefix + ".")}
    return [f"{where}:{line}: imports {prefix}" for line, prefix in sorted(found)]


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def base_names(node: ast.ClassDef) -> set[str]:
    return {ast.unparse(base).split(".")[-1] for base in node.bases}


def method(node: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    return next((item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == name), None)


def parent_assignments(init: ast.FunctionDef) -> dict[str, ast.expr]:
    """``self.parent.<attr> = value`` assignments of a Module's ``__init__``."""
    found = {}
    for node in ast.walk(init):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                text = ast.unparse(target)
                if text.startswith("self.parent."):
                    found[text.removeprefix("self.parent.")] = node.value
    return found


def module_test_file(module: str) -> Path:
    """Where a module's in-Slicer tests live (Slicer's scripted-module layout)."""
    return REPO / module / "Testing" / "Python" / f"{module}ModuleTest.py"


def panel_files(module: str) -> list[Path]:
    """The Qt-side files of a module besides the module file: its ``<Module>Widgets`` package, its Segment Editor
    effects (``<Module>Effects``) and its in-Slicer tests (all run only inside the Slicer application, like the module
    file)."""
    folders = [REPO / module / f"{module}Widgets", REPO / module / f"{module}Effects",
               REPO / module / "Testing" / "Python"]
    return [path for folder in folders if folder.is_dir() for path in python_files(folder)]


@pytest.mark.parametrize("module", MODULES)
def test_template_classes(module):
    """The four classes of Slicer's scripted-module template, with the right bases; Slicer finds the test case by
    the name ``<Module>Test`` (Reload and Test, slicer.selfTests, slicer.testing.runUnitTest) and the logic/widget by
    theirs. ``<Module>Test`` only delegates to the tests in ``Testing/Python`` (selftests.runModuleTest)."""
    found = classes(parse(module_file(module)))
    expected = {module: "ScriptedLoadableModule", f"{module}Widget": "ScriptedLoadableModuleWidget",
                f"{module}Logic": "ScriptedLoadableModuleLogic", f"{module}Test": "ScriptedLoadableModuleTest"}
    for name, base in expected.items():
        assert name in found, f"{module}.py has no class {name}"
        assert base in base_names(found[name]), f"{name} does not derive from {base}"
    test = found[f"{module}Test"]
    assert [item.name for item in test.body if isinstance(item, ast.FunctionDef)] == ["runTest"], (
        f"{module}Test should only delegate (its tests belong in {module_test_file(module).relative_to(REPO)})")
    calls = [node for node in ast.walk(test)
             if isinstance(node, ast.Call) and ast.unparse(node.func) == "runModuleTest"]
    assert len(calls) == 1, f"{module}Test.runTest does not call runModuleTest"
    assert [ast.unparse(arg) for arg in calls[0].args[:2]] == ["__file__", repr(f"{module}ModuleTest")]


@pytest.mark.parametrize("module", MODULES)
def test_module_tests_in_testing_python(module):
    """``Testing/Python/<Module>ModuleTest.py`` defines ``<Module>ModuleTest`` (the name runModuleTest looks up), a
    ScriptedLoadableModuleTest whose runTest calls every test_ method (Reload and Test runs runTest only), and no
    other test case class that ctest's runUnitTest would also collect."""
    path = module_test_file(module)
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    found = classes(parse(path))
    name = f"{module}ModuleTest"
    assert name in found and "ScriptedLoadableModuleTest" in base_names(found[name])
    assert [c for c in found if c.endswith("Test")] == [name]
    test = found[name]
    tests = [item.name for item in test.body if isinstance(item, ast.FunctionDef) and item.name.startswith("test_")]
    assert tests, f"{name} has no test_ method"
    run = method(test, "runTest")
    assert run is not None, f"{name} has no runTest"
    called = {ast.unparse(node.func) for node in ast.walk(run) if isinstance(node, ast.Call)}
    assert {f"self.{test_name}" for test_name in tests} <= called, f"{name}.runTest does not call every test_ method"
    imported = {alias.name for node in parse(path).body if isinstance(node, ast.ImportFrom) for alias in node.names}
    extra = {c for c in imported if c.endswith("Test")} - {"ScriptedLoadableModuleTest"}
    assert not extra, f"{sorted(extra)}: a test case class imported here runs a second time under ctest"


@pytest.mark.parametrize("module", MODULES)
def test_module_metadata_is_translatable(module):
    """title, helpText and acknowledgementText through ``_()``, categories through ``translate()`` (i18n)."""
    init = method(classes(parse(module_file(module)))[module], "__init__")
    assigned = parent_assignments(init)
    for attribute in ("title", "helpText", "acknowledgementText"):
        value = assigned.get(attribute)
        assert isinstance(value, ast.Call) and ast.unparse(value.func) == "_", f"{module}: parent.{attribute} not _()"
    categories = assigned.get("categories")
    assert isinstance(categories, ast.List) and all(
        isinstance(item, ast.Call) and ast.unparse(item.func) == "translate" for item in categories.elts)


@pytest.mark.parametrize("module", MODULES)
def test_hidden_only_for_the_core_module(module):
    """CADExtension is a helper (model manager, settings) reached from the other panels; they are listed."""
    assigned = parent_assignments(method(classes(parse(module_file(module)))[module], "__init__"))
    hidden = assigned.get("hidden")
    is_hidden = isinstance(hidden, ast.Constant) and hidden.value is True
    assert is_hidden == (module == "CADExtension")


@pytest.mark.parametrize("module", MODULES)
def test_dependencies_and_module_references_exist(module):
    """``parent.dependencies`` and ``selectModule("...")`` name modules of this extension."""
    tree = parse(module_file(module))
    assigned = parent_assignments(method(classes(tree)[module], "__init__"))
    names = [element.value for element in assigned["dependencies"].elts]
    names += [node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
              and ast.unparse(node.func).endswith("selectModule") and isinstance(node.args[0], ast.Constant)]
    assert set(names) <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_widget_lifecycle(module):
    """setup/enter/exit/cleanup; the panels with a parameter node also observe scene close (template pattern), and
    every resourcePath("...") names a file under Resources/."""
    tree = parse(module_file(module))
    widget = classes(tree)[f"{module}Widget"]
    for name in ("setup", "enter", "exit", "cleanup"):
        assert method(widget, name) is not None, f"{module}Widget.{name} is missing"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("resourcePath"):
            assert (REPO / module / "Resources" / node.args[0].value).is_file(), ast.unparse(node)
    if module == "CADExtension":
        return
    for name in ("onSceneStartClose", "onSceneEndClose", "initializeParameterNode", "setParameterNode"):
        assert method(widget, name) is not None, f"{module}Widget.{name} is missing"
    observed = {ast.unparse(node.args[1]) for node in ast.walk(method(widget, "setup"))
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "self.addObserver"}
    assert {"slicer.mrmlScene.StartCloseEvent", "slicer.mrmlScene.EndCloseEvent"} <= observed
    apply = method(widget, "onApplyButton")
    assert any(isinstance(node, ast.Call) and ast.unparse(node.func) == "slicer.util.tryWithErrorDisplay"
               for node in ast.walk(apply)), f"{module}Widget.onApplyButton does not use tryWithErrorDisplay"


@pytest.mark.parametrize("module", MODULES)
def test_module_files_never_import_the_engine(module):
    """Not even inside a function: torch/MONAI/cadcore stay in the engine process; the module goes through its Lib.
    The same holds for the module's ``<Module>Widgets`` package (panel sections kept out of the module file) and for
    its in-Slicer tests in ``Testing/Python``."""
    paths = [module_file(module), *panel_files(module)]
    assert [v for path in paths for v in violations(path, HEAVY)] == []


def test_widget_packages_stay_small_and_out_of_the_glue():
    """A ``<Module>Widgets`` or ``Testing/Python`` file is Qt code like the module file: the same size limit, and no
    Lib imports a Widgets package."""
    for module in MODULES:
        for path in panel_files(module):
            assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_MODULE_LINES, path
    for package in LIB_PACKAGES:
        for path in python_files(package) if package.is_dir() else []:
            assert violations(path, tuple(f"{module}Widgets" for module in MODULES)) == []


@pytest.mark.parametrize("module", MODULES)
def test_module_file_size(module):
    lines = len(module_file(module).read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module}.py has {lines} lines; move logic into {module}Lib"


@pytest.mark.parametrize("package", LIB_PACKAGES, ids=lambda p: p.name)
def test_lib_packages_never_import_qt(package):
    """The glue runs on the slicer-core wheel, which has no Qt: no qt/ctk, and neither ScriptedLoadableModule nor
    parameterNodeWrapper (both import qt); and importing the glue must not load torch (top level)."""
    if not package.is_dir():
        pytest.skip(f"{package.relative_to(REPO)} does not exist yet")
    found = []
    for path in python_files(package):
        found += violations(path, QT_LAYER) + violations(path, HEAVY, top_level_only=True)
    assert found == []


def test_engine_never_imports_slicer():
    """cadcore runs under plain Python (CLI, pip package, CI): no slicer, vtk or Qt anywhere in it."""
    files = python_files(ENGINE)
    assert len(files) > 10
    assert [v for path in files for v in violations(path, SLICER_SIDE)] == []


def test_no_imp_anywhere():
    """``imp`` was removed in Python 3.12, which Slicer >= 5.10 ships (A3D and NNU still ``import imp``)."""
    files = [p for module in MODULES for p in python_files(REPO / module)]
    assert [v for path in files for v in violations(path, ("imp",))] == []


def test_layer_checker_catches_violations(tmp_path):
    """The checks above are not vacuous: each rule flags a file that breaks it."""
    bad = tmp_path / "bad.py"
    bad.write_text("import qt\nfrom slicer.ScriptedLoadableModule import *\ndef f():\n    import torch\n"
                   "from slicer import parameterNodeWrapper\nimport imp\nimport vtkmodules.all\n")
    assert len(violations(bad, QT_LAYER)) == 3  # qt, ScriptedLoadableModule, parameterNodeWrapper
    assert len(violations(bad, HEAVY)) == 1 and violations(bad, HEAVY, top_level_only=True) == []
    assert len(violations(bad, ("imp",))) == 1
    assert len(violations(bad, SLICER_SIDE)) >= 4
