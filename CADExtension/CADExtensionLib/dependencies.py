"""The engine's Python packages inside Slicer: check what is missing, install it the way Slicer extensions must.

Rules (slicer-conventions.md §3, and the public issues it lists):

* **torch** comes from the PyTorch extension: ``PyTorchUtils.PyTorchUtilsLogic().installTorch(...)`` picks the CUDA
  or CPU wheel that fits the machine (light-the-torch). It is never pip-installed here, and it is installed *first*,
  so that installing MONAI cannot pull a PyPI torch in (lassoan/SlicerTotalSegmentator#65).
* **SimpleITK and numpy** (and requests) are Slicer's own: never installed nor replaced. If they are missing or too
  old the user is told to update Slicer. While the other packages install, ``PIP_CONSTRAINT`` (and uv's
  ``UV_CONSTRAINT``) pin the installed versions of SimpleITK, numpy, requests and torch, so a dependency that would
  replace one of them makes pip fail instead (lassoan/SlicerTotalSegmentator#4).
* The other requirements go through ``slicer.util.pip_install`` **one string at a time** (the one call form every
  Slicer version accepts), after the user confirmed the list once.

:data:`REQUIREMENTS`, :data:`SLICER_PROVIDED` and :data:`TORCH_REQUIREMENT` together are the ``dependencies`` of
``pyproject.toml`` (a test keeps them equal). Versions are compared with a simple numeric parser (no ``packaging``,
which Slicer does not guarantee): ``2.13.0+cpu`` is 2.13.0, and a pre-release such as ``1.4.0rc1`` counts as 1.4.0.

The installers are injectable (``pipInstall``, ``torchInstaller``, ``confirm``, ``versionOf``) so tests run on the
bare MRML core with fakes whose signatures are checked against the real ones.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

TORCH_REQUIREMENT = "torch>=2.2"
SLICER_PROVIDED = ("SimpleITK>=2.3", "numpy>=1.24")
"""Needed by the engine, shipped with Slicer, never installed or replaced from here."""
REQUIREMENTS = (
    "monai>=1.4",
    "scipy>=1.10",
    "safetensors>=0.4",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "scikit-learn>=1.3",
    "scikit-image>=0.22",
    "fastapi>=0.110",
    "uvicorn>=0.29",
    "highdicom>=0.22",
)
"""What ``pip_install`` may install, one string per call, in this order."""
PINNED_WHILE_INSTALLING = ("SimpleITK", "numpy", "requests", "torch")
"""Distributions whose installed version is pinned (constraints file) while the requirements install."""
NEVER_PIP_INSTALL = ("simpleitk", "numpy", "requests", "torch")

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][0-9A-Za-z.+!-]*)\s*$")


@dataclass(frozen=True)
class PackageStatus:
    requirement: str
    name: str
    minimum: str
    installed: str | None

    @property
    def satisfied(self) -> bool:
        return self.installed is not None and versionTuple(self.installed) >= versionTuple(self.minimum)


class DependencyError(RuntimeError):
    """The engine's packages cannot be (or were not) installed; the message says what to do."""


def parseRequirement(requirement: str) -> tuple[str, str]:
    """``"name>=1.2"`` → ``("name", "1.2")``; only the ``>=`` form used by the engine is accepted."""
    match = _REQUIREMENT.match(requirement)
    if not match:
        raise ValueError(f"expected 'name>=version', got {requirement!r}")
    return match.group(1), match.group(2)


def versionTuple(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string, trailing zeros removed: ``"2.13.0+cpu"`` → ``(2, 13)``.

    An epoch (``1!2.0``) is ignored; a pre/post/dev/local suffix after the numbers is ignored too.
    """
    text = str(version).strip().split("!")[-1]
    match = re.match(r"v?(\d+(?:\.\d+)*)", text)
    if not match:
        raise ValueError(f"not a version: {version!r}")
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def installedVersion(distribution: str) -> str | None:
    """The installed version of a distribution (``importlib.metadata``), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _slicerPipInstall(requirements: str) -> None:
    import slicer

    slicer.util.pip_install(requirements)


def _slicerConfirm(message: str) -> bool:
    import slicer

    return bool(slicer.util.confirmOkCancelDisplay(message))


def _pyTorchUtilsInstallTorch(askConfirmation: bool = False, forceComputationBackend: str | None = None,
                              torchVersionRequirement: str | None = None):
    """``PyTorchUtils.PyTorchUtilsLogic().installTorch`` of the PyTorch extension (fepegar/SlicerPyTorch)."""
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise DependencyError("the PyTorch extension is needed to install torch: install 'PyTorch' from the "
                              "Extensions Manager, restart Slicer, and try again") from exc
    return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation, forceComputationBackend,
                                                         torchVersionRequirement)


@contextmanager
def pinnedInstalledVersions(distributions: Sequence[str], versionOf: Callable[[str], str | None] = installedVersion,
                            ) -> Iterator[str | None]:
    """Point ``PIP_CONSTRAINT`` and ``UV_CONSTRAINT`` at a file pinning the installed ``distributions``.

    pip (and uv, which Slicer 5.12's installer may use) read these variables in the child process that
    ``pip_install`` starts with the current environment; both are restored afterwards, the file removed. Yields the
    constraints file path (None when nothing is installed to pin).
    """
    pins = [f"{name}=={version}" for name in distributions if (version := versionOf(name))]
    if not pins:
        yield None
        return
    handle, path = tempfile.mkstemp(prefix="CADExtension-constraints-", suffix=".txt")
    saved = {name: os.environ.get(name) for name in ("PIP_CONSTRAINT", "UV_CONSTRAINT")}
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write("\n".join(pins) + "\n")
        for name in saved:
            os.environ[name] = path
        yield path
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.unlink(path)


class DependencyLogic:
    """Check and install the engine's packages (see the module docstring)."""

    def __init__(self, pipInstall: Callable[[str], None] | None = None, torchInstaller: Callable[..., object] | None
                 = None, confirm: Callable[[str], bool] | None = None,
                 versionOf: Callable[[str], str | None] | None = None) -> None:
        self.pipInstall = pipInstall or _slicerPipInstall
        self.torchInstaller = torchInstaller or _pyTorchUtilsInstallTorch
        self.confirm = confirm or _slicerConfirm
        self.versionOf = versionOf or installedVersion

    def status(self, requirements: Sequence[str] | None = None) -> list[PackageStatus]:
        """Each requirement with its installed version (default: torch, Slicer's own, then the rest)."""
        result = []
        for requirement in requirements or (TORCH_REQUIREMENT, *SLICER_PROVIDED, *REQUIREMENTS):
            name, minimum = parseRequirement(requirement)
            result.append(PackageStatus(requirement, name, minimum, self.versionOf(name)))
        return result

    def missingPackages(self) -> list[str]:
        """The requirements that are not installed or too old, e.g. ``["torch>=2.2", "monai>=1.4"]``."""
        return [status.requirement for status in self.status() if not status.satisfied]

    def restartNeeded(self, installed: Sequence[str]) -> bool:
        """True when one of ``installed`` was already imported in this session (the old version stays loaded)."""
        modules = {"scikit-learn": "sklearn", "scikit-image": "skimage"}
        return any(modules.get(name, name).replace("-", "_") in sys.modules
                   for name, _ in map(parseRequirement, installed))

    def installMissing(self, askConfirmation: bool = True) -> list[str]:
        """Install what :meth:`missingPackages` lists; returns the requirements installed (empty when none).

        torch first through the PyTorch extension, then the rest with ``pip_install``, one requirement per call,
        with Slicer's own packages pinned. Raises :class:`DependencyError` when SimpleITK or numpy is missing or too
        old (update Slicer), when the user declines, or when a package is still missing afterwards.
        """
        missing = self.missingPackages()
        if not missing:
            return []
        slicerOwn = [r for r in missing if r in SLICER_PROVIDED]
        if slicerOwn:
            raise DependencyError(f"{', '.join(slicerOwn)} must come with Slicer and is not installed here (that "
                                  "would replace Slicer's own copy); use a newer Slicer")
        installed: list[str] = []
        if TORCH_REQUIREMENT in missing:
            if askConfirmation and not self.confirm(
                    "CADExtension needs PyTorch. It will be installed by the PyTorch extension (CUDA or CPU build "
                    "chosen for this computer); this can take several minutes. Continue?"):
                raise DependencyError("PyTorch installation cancelled")
            name, minimum = parseRequirement(TORCH_REQUIREMENT)
            torch = self.torchInstaller(False, None, f">={minimum}")  # asked above; PyTorchUtils need not ask again
            if torch is None or not PackageStatus(TORCH_REQUIREMENT, name, minimum, self.versionOf(name)).satisfied:
                raise DependencyError(f"PyTorch was not installed ({TORCH_REQUIREMENT} is needed); install it from the "
                                      "PyTorch Utils module")
            installed.append(TORCH_REQUIREMENT)
        rest = [r for r in missing if r in REQUIREMENTS]
        if rest:
            if askConfirmation and not self.confirm(
                    "CADExtension needs these Python packages, which will be downloaded and installed now:\n  "
                    + "\n  ".join(rest) + "\nContinue?"):
                raise DependencyError("installation of " + ", ".join(rest) + " cancelled")
            with pinnedInstalledVersions(PINNED_WHILE_INSTALLING, self.versionOf):
                for requirement in rest:
                    if parseRequirement(requirement)[0].lower() in NEVER_PIP_INSTALL:  # a guard against edits above
                        raise DependencyError(f"refusing to pip-install {requirement}")
                    logging.info("CADExtension: installing %s", requirement)
                    self.pipInstall(requirement)
                    installed.append(requirement)
        still = [r for r in self.missingPackages() if r in installed]
        if still:
            raise DependencyError(f"still missing after installation: {', '.join(still)}")
        return installed
