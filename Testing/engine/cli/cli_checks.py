"""Helpers shared by the CLI reliability tests: folder snapshots, stderr split the way the Slicer module splits it,
small tmpfs mounts, and a tiny input volume."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO

ENGINE = REPO / "CADExtension"


def _slicer_side_process_module():
    """``CADExtensionLib/process.py``, the Slicer module's own output parser, loaded by file: the package's
    ``__init__`` imports ``slicer``, which an engine-only environment does not have; this file needs only stdlib."""
    spec = importlib.util.spec_from_file_location("cad_slicer_process", ENGINE / "CADExtensionLib" / "process.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_PROCESS = _slicer_side_process_module()
LineSplitter = _PROCESS.LineSplitter
parseProgress = _PROCESS.parseProgress


def snapshot(folder: Path) -> dict[str, tuple[int, int] | str]:
    """Every entry under ``folder``, hidden ones included: a file's (size, modification time in ns), "folder" for a
    folder (whose own time moves when the writability probe creates and removes its hidden file)."""
    entries: dict[str, tuple[int, int] | str] = {}
    for root, folders, files in os.walk(folder):
        for name in folders:
            entries[str((Path(root) / name).relative_to(folder))] = "folder"
        for name in files:
            stat = (Path(root) / name).lstat()
            entries[str((Path(root) / name).relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return entries


def messages(stderr: str) -> list[str]:
    """The stderr lines that are not progress, exactly as the Slicer module tells them apart."""
    return [line for line in LineSplitter().feed(stderr + "\n") if parseProgress(line) is None]


def one_message(stderr: str) -> str:
    lines = messages(stderr)
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert "Traceback" not in stderr
    return lines[0]


def write_volume(path: Path, shape=(20, 24, 18), seed: int = 0) -> Path:
    """An MR-like volume (K, J, I array) with a bright ellipsoid."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape)
    centre = np.array(shape) / 2
    inside = ((k - centre[0]) / 5) ** 2 + ((j - centre[1]) / 7) ** 2 + ((i - centre[2]) / 4) ** 2 < 1
    image = sitk.GetImageFromArray((rng.normal(100, 10, shape) + 80 * inside).astype(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``folder`` (e.g. ``size=64k`` or ``ro``); skips the test where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux"):
        pytest.skip("tmpfs mounts need Linux")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); "
                    "the fault-injection tests cover the same paths")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def engine_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cadcore", *args]


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env
