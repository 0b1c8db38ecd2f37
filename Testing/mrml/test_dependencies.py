"""DependencyLogic: requirements equal pyproject's, version parsing, and the install rules (torch through the PyTorch
extension first, Slicer's own packages never installed and pinned, one pip_install string per requirement), driven
through the signature-checked ``pip_install`` fake."""

from __future__ import annotations

import inspect
import os
import sys
import types
from pathlib import Path

import pytest
from CADExtensionLib.dependencies import (
    REQUIREMENTS,
    SLICER_PROVIDED,
    TORCH_REQUIREMENT,
    DependencyError,
    DependencyLogic,
    _pyTorchUtilsInstallTorch,
    parseRequirement,
    pinnedInstalledVersions,
    versionTuple,
)

from .conftest import _REAL, PIP_INSTALL_CALLS, REPO

SLICER_VERSIONS = {"SimpleITK": "2.4.1", "numpy": "1.26.4", "requests": "2.32.3"}


def test_requirements_are_pyprojects_dependencies():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ours = [TORCH_REQUIREMENT, *SLICER_PROVIDED, *REQUIREMENTS]
    assert sorted("".join(r.split()) for r in declared) == sorted(ours)
    assert len(set(ours)) == len(ours)


@pytest.mark.parametrize(("version", "expected"), [
    ("2.13.0+cpu", (2, 13)), ("1.4", (1, 4)), ("1.4.0rc1", (1, 4)), ("0.4.5", (0, 4, 5)), ("1!2.0.post1", (2,)),
    ("10", (10,)), ("v3.7.1", (3, 7, 1)),
])
def test_version_tuple(version, expected):
    assert versionTuple(version) == expected


def test_version_comparison_and_requirement_parsing():
    assert versionTuple("1.10.0") > versionTuple("1.9.9") and versionTuple("2.2") == versionTuple("2.2.0")
    assert parseRequirement("scikit-learn>=1.3") == ("scikit-learn", "1.3")
    for bad in ("monai", "monai==1.4", "monai>=1.4,<2", ">=1"):
        with pytest.raises(ValueError):
            parseRequirement(bad)
    with pytest.raises(ValueError):
        versionTuple("unknown")


def test_nothing_is_missing_in_this_environment():
    """The real ``importlib.metadata`` names (scikit-learn, SimpleITK, ...) resolve in the test environment."""
    logic = DependencyLogic()
    assert logic.missingPackages() == []
    assert logic.installMissing() == []


class Environment:
    """Fake installed versions, a torch installer with PyTorchUtils' signature and a recording confirm."""

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions = dict(versions)
        self.events: list[tuple] = []
        self.answers: list[bool] = []
        self.torchResult: object = "torch module"

    def versionOf(self, name: str) -> str | None:
        return self.versions.get(name)

    def confirm(self, message: str) -> bool:
        self.events.append(("confirm", message))
        return self.answers.pop(0) if self.answers else True

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        self.events.append(("torch", askConfirmation, forceComputationBackend, torchVersionRequirement))
        if self.torchResult is not None:
            self.versions["torch"] = "2.13.0+cpu"
        return self.torchResult


PYTORCHUTILS_INSTALL_TORCH = [("askConfirmation", False), ("forceComputationBackend", None),
                              ("torchVersionRequirement", None)]
"""``PyTorchUtilsLogic.installTorch(self, askConfirmation=False, forceComputationBackend=None,
torchVersionRequirement=None)`` in fepegar/SlicerPyTorch ``PyTorchUtils/PyTorchUtils.py`` (later versions append
``torchvisionVersionRequirement``). The extension cannot be installed outside Slicer, so this is copied here."""


def parameters(function) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def test_fake_torch_installer_has_pytorchutils_signature():
    """The fake and our adapter take PyTorchUtils' first three parameters; the adapter passes them positionally,
    which both the old and the newer four-parameter version accept."""
    assert parameters(Environment(SLICER_VERSIONS).installTorch) == PYTORCHUTILS_INSTALL_TORCH
    assert parameters(_pyTorchUtilsInstallTorch) == PYTORCHUTILS_INSTALL_TORCH


def test_default_torch_installer_calls_pytorchutils_or_explains_its_absence(monkeypatch):
    calls = []

    class PyTorchUtilsLogic:  # the newer four-parameter form
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            calls.append((askConfirmation, forceComputationBackend, torchVersionRequirement,
                          torchvisionVersionRequirement))
            return "torch module"

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    assert _pyTorchUtilsInstallTorch(False, None, ">=2.2") == "torch module"
    assert calls == [(False, None, ">=2.2", None)]
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails as without the extension
    with pytest.raises(DependencyError, match="PyTorch extension"):
        _pyTorchUtilsInstallTorch(False, None, ">=2.2")


def test_install_torch_first_then_one_pip_install_string_each_with_slicers_packages_pinned(fakeSlicerApp):
    """Default pipInstall: the real call path through ``slicer.util.pip_install`` (here the checked fake)."""
    import slicer

    environment = Environment(SLICER_VERSIONS | {"monai": "1.3.2", "tqdm": "4.66", "safetensors": "0.4.5",
                                                 "matplotlib": "3.9", "scikit-learn": "1.5.2",
                                                 "scikit-image": "0.24", "fastapi": "0.110", "uvicorn": "0.29",
                                                 "highdicom": "0.22"})
    seen: list[tuple[str, str, str, str]] = []

    def recordingPipInstall(requirements, **kwargs):
        constraints = os.environ.get("PIP_CONSTRAINT", "")
        seen.append((requirements, Path(constraints).read_text() if constraints else "", constraints,
                     os.environ.get("UV_CONSTRAINT", "")))
        _, version = parseRequirement(requirements)
        environment.versions[parseRequirement(requirements)[0]] = version
        environment.events.append(("pip", requirements))
        return fakePip(requirements, **kwargs)

    fakePip = slicer.util.pip_install
    assert inspect.signature(recordingPipInstall) == inspect.signature(_REAL["pip_install"])
    slicer.util.pip_install = recordingPipInstall  # undone by the fixture's monkeypatch
    before = {name: os.environ.get(name) for name in ("PIP_CONSTRAINT", "UV_CONSTRAINT")}
    logic = DependencyLogic(torchInstaller=environment.installTorch, confirm=environment.confirm,
                            versionOf=environment.versionOf)
    assert logic.missingPackages() == ["torch>=2.2", "monai>=1.4", "scipy>=1.10"]

    assert logic.installMissing() == ["torch>=2.2", "monai>=1.4", "scipy>=1.10"]
    kinds = [event[0] for event in environment.events]
    assert kinds == ["confirm", "torch", "confirm", "pip", "pip"]  # asked, torch first, asked once for the rest
    assert environment.events[1] == ("torch", False, None, ">=2.2")
    assert "monai>=1.4" in environment.events[2][1] and "scipy>=1.10" in environment.events[2][1]
    assert PIP_INSTALL_CALLS == [("monai>=1.4", {}), ("scipy>=1.10", {})]  # one plain string per call
    for requirement, constraints, pipPath, uvPath in seen:
        assert set(constraints.split()) == {"SimpleITK==2.4.1", "numpy==1.26.4", "requests==2.32.3",
                                            "torch==2.13.0+cpu"}, requirement
        assert pipPath and uvPath == pipPath
    assert {name: os.environ.get(name) for name in before} == before  # restored
    assert not Path(seen[0][2]).exists()  # constraints file removed
    assert logic.missingPackages() == [] and logic.installMissing() == []


@pytest.mark.parametrize("old", ["numpy", "SimpleITK"])
def test_slicers_own_packages_are_never_installed(fakeSlicerApp, old):
    environment = Environment(SLICER_VERSIONS | {old: "1.0"})
    logic = DependencyLogic(torchInstaller=environment.installTorch, confirm=environment.confirm,
                            versionOf=environment.versionOf)
    with pytest.raises(DependencyError, match=f"{old}>=.*must come with Slicer"):
        logic.installMissing()
    assert environment.events == [] and PIP_INSTALL_CALLS == []


def test_declining_or_a_failed_torch_install_installs_nothing(fakeSlicerApp):
    environment = Environment(SLICER_VERSIONS)
    logic = DependencyLogic(torchInstaller=environment.installTorch, confirm=environment.confirm,
                            versionOf=environment.versionOf)
    environment.answers = [False]
    with pytest.raises(DependencyError, match="cancelled"):
        logic.installMissing()
    assert [e[0] for e in environment.events] == ["confirm"] and PIP_INSTALL_CALLS == []

    environment.events.clear()
    environment.torchResult = None  # PyTorchUtils returns None when its own confirmation is declined
    with pytest.raises(DependencyError, match="PyTorch was not installed"):
        logic.installMissing()
    assert [e[0] for e in environment.events] == ["confirm", "torch"] and PIP_INSTALL_CALLS == []

    environment.events.clear()
    environment.torchResult = "torch module"
    environment.answers = [True, False]  # torch yes, the other packages no
    with pytest.raises(DependencyError, match="monai>=1.4.*cancelled"):
        logic.installMissing()
    assert PIP_INSTALL_CALLS == []


def test_a_package_still_missing_after_pip_is_reported(fakeSlicerApp):
    environment = Environment(SLICER_VERSIONS | {"torch": "2.5", "scipy": "1.11", "safetensors": "0.4",
                                                 "tqdm": "4.60.0", "matplotlib": "3.7", "scikit-learn": "1.3",
                                                 "scikit-image": "0.22", "fastapi": "0.110", "uvicorn": "0.29",
                                                 "highdicom": "0.22.0"})
    logic = DependencyLogic(confirm=environment.confirm, versionOf=environment.versionOf)  # default pipInstall
    with pytest.raises(DependencyError, match="still missing after installation: monai>=1.4"):
        logic.installMissing(askConfirmation=False)
    assert PIP_INSTALL_CALLS == [("monai>=1.4", {})] and environment.events == []


def test_pins_only_what_is_installed_and_restore_the_environment(monkeypatch):
    monkeypatch.setenv("PIP_CONSTRAINT", "/theirs.txt")
    monkeypatch.delenv("UV_CONSTRAINT", raising=False)
    with pinnedInstalledVersions(["numpy", "absent"], {"numpy": "2.0.1"}.get) as path:
        assert Path(path).read_text() == "numpy==2.0.1\n" and os.environ["UV_CONSTRAINT"] == path
    assert os.environ["PIP_CONSTRAINT"] == "/theirs.txt" and "UV_CONSTRAINT" not in os.environ
    assert not Path(path).exists()
    with pinnedInstalledVersions(["absent"], {}.get) as nothing:
        assert nothing is None


def test_restart_needed_only_for_packages_already_imported():
    logic = DependencyLogic()
    assert logic.restartNeeded(["scikit-learn>=1.3"]) == ("sklearn" in sys.modules)
    assert logic.restartNeeded(["surely-not-imported-package>=1"]) is False
