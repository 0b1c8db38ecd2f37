"""Real MRML without the Slicer application (docs/slicer-testing.md §5b), on the pinned ``slicer-core`` wheel.

The fixture builds what Slicer's core application would: a scene, an application logic whose colour logic holds the
default colour nodes, and the Colors, Volumes, Segmentations and SubjectHierarchy module logics registered with
``SetModuleLogic``. It sets ``slicer.mrmlScene`` and a ``slicer.modules`` namespace whose ``<name>.logic()`` returns
those objects, so the *real* ``slicer.util`` helpers run unchanged; everything is restored afterwards.

Fakes exist only for what slicer-core lacks (``slicer.app``, and the two ``slicer.util`` functions that need it:
``launchConsoleProcess`` with its default startup environment, and ``pip_install``); their signatures are checked
against the wheel's ``slicer/util.py`` in ``test_fakes.py``. The whole folder is skipped when slicer-core is absent.
"""

from __future__ import annotations

import shutil
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from conftest import make_tiny_segmentation_package

slicer = pytest.importorskip(
    "slicer",
    reason="slicer-core is not installed (pip install slicer-core==5.13.31053.0 vtk==9.6.2, the 'dev' extra); "
    "the MRML suite needs real MRML",
)
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the importable 'slicer' package is not slicer-core (no vtkMRMLScene)", allow_module_level=True)

if TYPE_CHECKING:
    from subprocess import Popen

REPO = Path(__file__).resolve().parents[2]
MODULE_FOLDERS = [REPO / "CADExtension", REPO / "CADSegment", REPO / "CADClassify"]
for _folder in reversed(MODULE_FOLDERS):  # as Slicer does for every scripted module folder
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

_MISSING = object()


class _Module:
    """Stands for a ``slicer.modules.<name>`` entry: only ``logic()`` is available without Qt."""

    def __init__(self, logic: Any) -> None:
        self._logic = logic

    def logic(self) -> Any:
        return self._logic


@dataclass
class Mrml:
    """The scene and logics of one test; ``nodeIds()`` snapshots the scene for before/after comparisons."""

    scene: Any
    applicationLogic: Any
    logics: dict[str, Any] = field(default_factory=dict)

    def nodeIds(self) -> set[str]:
        return {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}


def _registerLogic(name: str, logic: Any, scene: Any, applicationLogic: Any) -> Any:
    logic.SetMRMLApplicationLogic(applicationLogic)
    logic.SetMRMLScene(scene)
    applicationLogic.SetModuleLogic(name, logic)
    return logic


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty folder for a Logic's files (the tests' ``tmp_path`` also holds their inputs)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture
def mrml() -> Iterator[Mrml]:
    """A fresh real MRML scene wired like Slicer's core application; ``slicer.mrmlScene``/``modules`` restored after."""
    scene = slicer.vtkMRMLScene()
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetMRMLScene(scene)
    applicationLogic.GetColorLogic().SetMRMLScene(scene)
    applicationLogic.GetColorLogic().AddDefaultColorNodes()
    logics = {
        # Without "Colors", CreateAndAddLabelVolume logs "invalid Colors module logic" (slicer-testing.md §5b).
        "Colors": _registerLogic("Colors", slicer.vtkMRMLColorLogic(), scene, applicationLogic),
        "Volumes": _registerLogic("Volumes", slicer.vtkSlicerVolumesLogic(), scene, applicationLogic),
        "Segmentations": _registerLogic("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic(), scene,
                                        applicationLogic),
        "SubjectHierarchy": _registerLogic("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic(), scene,
                                           applicationLogic),
    }
    saved = {name: getattr(slicer, name, _MISSING) for name in ("mrmlScene", "modules")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{name.lower(): _Module(logic) for name, logic in logics.items()})
    try:
        yield Mrml(scene, applicationLogic, logics)
    finally:
        for name, value in saved.items():
            if value is _MISSING:
                delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        scene.Clear(1)


# --- fakes for what slicer-core lacks -------------------------------------------------------------------------------


def fake_launchConsoleProcess(
    args: list[str],
    useStartupEnvironment: bool = True,
    updateEnvironment: dict[str, str] | None = None,
    cwd: str | None = None,
    blocking: bool = True,
    logCallback: Callable[[str], None] | None = None,
    completedCallback: Callable[[int], None] | None = None,
) -> Popen[str]:
    """The real function with ``useStartupEnvironment=False``: outside Slicer the current environment *is* the
    startup one, and the real default needs ``slicer.app``. Non-blocking mode needs Qt's timer, so it is refused."""
    if not blocking:
        raise NotImplementedError("blocking=False needs qt.QTimer, which slicer-core does not have")
    return _REAL["launchConsoleProcess"](args, useStartupEnvironment=False, updateEnvironment=updateEnvironment,
                                         cwd=cwd, blocking=True)


def fake_pip_install(requirements, **kwargs):
    """Records the request instead of installing (the real one needs ``slicer.packaging``, absent in slicer-core)."""
    PIP_INSTALL_CALLS.append((requirements, kwargs))


PIP_INSTALL_CALLS: list[tuple[Any, dict[str, Any]]] = []
FAKE_UTIL_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "launchConsoleProcess": fake_launchConsoleProcess,
    "pip_install": fake_pip_install,
}
_REAL = {name: getattr(slicer.util, name) for name in FAKE_UTIL_FUNCTIONS}


@pytest.fixture
def fakeSlicerApp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> types.SimpleNamespace:
    """``slicer.app`` (only ``temporaryPath``) plus the faked ``slicer.util`` functions, undone after the test."""
    app = types.SimpleNamespace(temporaryPath=str(tmp_path / "SlicerTemp"))
    monkeypatch.setattr(slicer, "app", app, raising=False)
    for name, fake in FAKE_UTIL_FUNCTIONS.items():
        monkeypatch.setattr(slicer.util, name, fake)
    PIP_INSTALL_CALLS.clear()
    return app


def processAlive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (psutil when installed, else /proc or ``os.kill(pid, 0)``)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    status = Path(f"/proc/{pid}/stat")
    if status.exists():
        try:
            return status.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- Improve model: the parent package and the folders both of its test files use -----------------------------

PREPROCESSING = {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0],
                 "normalization": {"kind": "mr", "percentiles": [0.5, 99.5]}}


@pytest.fixture(scope="module")
def parent_package(tmp_path_factory) -> Path:
    """The tiny random DynUNet (anterior = 1, posterior = 2) working at 2 mm with 16³ windows."""
    return make_tiny_segmentation_package(tmp_path_factory.mktemp("parent") / "tiny-unet",
                                          preprocessing=PREPROCESSING).folder


@pytest.fixture
def folders(tmp_path, parent_package) -> dict[str, Path]:
    """A user models folder holding the parent, an empty shipped folder and an empty temporary folder."""
    found = {name: tmp_path / name for name in ("user", "shipped", "work")}
    for folder in found.values():
        folder.mkdir()
    shutil.copytree(parent_package, found["user"] / "tiny-unet")
    return found
