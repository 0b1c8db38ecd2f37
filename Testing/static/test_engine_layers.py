"""The engine's architecture, checked from its source: layers imported top-down only, no import cycles, and
``argparse`` only in the command line.

The import graph is read with ``ast`` from every file of ``cadcore`` and includes imports inside functions (the
lazy imports that used to hide cycles). Each subpackage is a layer, lowest first:

    errors, progress, device  <  io  <  registry  <  preprocessing  <  segmentation  <  classification
    <  evaluation  <  training  <  server  <  cli  <  __main__

A module may import its own layer (without cycles) and the layers below: ``server`` (``cad serve``'s HTTP API) uses
every engine layer but never the command line, whose ``serve`` command starts it. The checks run on a copy of the
tree with a planted cycle, a planted upward import and a planted ``argparse`` too, so they are known to fail when
they should.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "CADExtension" / "cadcore"
LAYERS = ["", "errors", "progress", "device", "io", "registry", "preprocessing", "segmentation", "classification",
          "evaluation", "training", "server", "cli", "__main__"]
RANK = {name: 0 for name in ("", "errors", "progress", "device")} | {
    name: index for index, name in enumerate(LAYERS) if index >= 4}
CLI_ONLY = ("argparse",)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, at any depth; ``from a import b`` names ``a.b`` when
    ``b`` is a module, else ``a``. Relative imports are resolved against the file's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.append((child if child in known else base, node.lineno))
    return found


def graph(root: Path) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    """cadcore's own import edges, and every import (third-party included) per module."""
    files = modules(root)
    known = set(files)
    edges: dict[str, set[str]] = {name: set() for name in files}
    every: dict[str, list[tuple[str, int]]] = {}
    for name, path in files.items():
        every[name] = imports_of(path, name, known)
        edges[name] |= {target for target, _ in every[name] if target in known and target != name}
    return edges, every


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer_problems(root: Path) -> list[str]:
    """Everything wrong with the tree at ``root``: unplaced modules, upward imports, cycles, ``argparse`` outside
    the CLI. Empty when the architecture holds."""
    edges, every = graph(root)
    problems = [f"{name} is in no layer (add its folder to LAYERS)" for name in edges if layer_of(name) not in RANK]
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            if layer_of(source) in RANK and layer_of(target) in RANK and RANK[layer_of(target)] > RANK[
                    layer_of(source)]:
                problems.append(f"{source} imports {target}, a higher layer")
    problems += [f"import cycle: {' -> '.join(component)}" for component in cycles(edges)]
    for source, found in sorted(every.items()):
        if layer_of(source) != "cli":
            problems += [f"{source}:{line} imports {target} (only cadcore.cli may)" for target, line in found
                         if target.split(".")[0] in CLI_ONLY]
    return problems


def test_engine_imports_run_top_down_without_cycles():
    assert layer_problems(ENGINE) == []


def test_every_layer_is_a_package_of_the_engine():
    """The layer list names real folders (a renamed layer must not make the check vacuous)."""
    for layer in LAYERS[4:-1]:
        assert (ENGINE / layer / "__init__.py").is_file(), layer
    assert len(modules(ENGINE)) > 40


@pytest.fixture
def engine_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "cadcore"
    shutil.copytree(ENGINE, copy, ignore=shutil.ignore_patterns("__pycache__", "models"))
    assert layer_problems(copy) == []
    return copy


def plant(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code + "\n")


def test_a_planted_cycle_inside_one_layer_is_found(engine_copy: Path):
    plant(engine_copy / "registry" / "locations.py", "def later():\n    from cadcore.registry import packages")
    problems = layer_problems(engine_copy)
    assert any(p.startswith("import cycle:") and "cadcore.registry.locations" in p for p in problems), problems


def test_a_planted_upward_import_is_found(engine_copy: Path):
    plant(engine_copy / "io" / "images.py", "def later():\n    from cadcore.cli import main")
    problems = layer_problems(engine_copy)
    assert "cadcore.io.images imports cadcore.cli, a higher layer" in problems
    assert any(p.startswith("import cycle:") for p in problems)  # cli imports io, so this is a cycle too


def test_a_planted_relative_upward_import_is_found(engine_copy: Path):
    plant(engine_copy / "preprocessing" / "working_space.py", "def later():\n    from ..segmentation import predict")
    assert "cadcore.preprocessing.working_space imports cadcore.segmentation.predict, a higher layer" in \
        layer_problems(engine_copy)


def test_the_server_importing_the_command_line_is_found(engine_copy: Path):
    plant(engine_copy / "server" / "app.py", "def later():\n    from cadcore.cli import parser")
    assert "cadcore.server.app imports cadcore.cli.parser, a higher layer" in layer_problems(engine_copy)


def test_argparse_outside_the_cli_is_found(engine_copy: Path):
    plant(engine_copy / "segmentation" / "predict.py", "import argparse")
    assert any("cadcore.segmentation.predict" in p and "argparse" in p for p in layer_problems(engine_copy))


def test_a_module_outside_every_layer_is_found(engine_copy: Path):
    (engine_copy / "stray.py").write_text('"""A module that belongs to no layer."""\n')
    assert "cadcore.stray is in no layer (add its folder to LAYERS)" in layer_problems(engine_copy)
