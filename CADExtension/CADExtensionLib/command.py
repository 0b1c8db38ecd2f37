"""Pure builders for the engine command line and its environment.

Kept free of ``slicer``, ``vtk`` and I/O so the exact argv the Slicer module runs can be unit-tested as a list, and
so the engine contract (``cad segment INPUT -m MODEL -o OUTPUT ...``, README "The ``cad`` command") is written down
in exactly one place on the Slicer side.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

ENGINE_MODULE = "cadcore"
"""``python -m cadcore`` runs the ``cad`` command (``cadcore/__main__.py``); no console script needs to be on PATH."""

DEVICES = ("auto", "cpu", "cuda", "mps")


def segmentArgv(
    python: str | os.PathLike[str],
    inputPath: str | os.PathLike[str],
    outputPath: str | os.PathLike[str],
    model: str | os.PathLike[str],
    device: str = "auto",
    overlap: float | None = None,
    useCascade: bool = True,
    probabilitiesPath: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The argv of one ``cad segment`` run.

    ``--force`` is always passed: the output lives in a temporary folder the glue created for this run, so an
    existing file there can only be a leftover of our own, never user data (the engine refuses to overwrite
    without it). ``overlap`` and ``device`` are checked here as well as in the engine so a bad value fails before a
    process is started and the volume is written.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r} (use one of {', '.join(DEVICES)})")
    argv = [str(python), "-m", ENGINE_MODULE, "segment", str(inputPath), "-m", str(model), "-o", str(outputPath),
            "--device", device]
    if overlap is not None:
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        argv += ["--overlap", str(float(overlap))]
    if not useCascade:
        argv.append("--no-cascade")
    if probabilitiesPath is not None:
        argv += ["--probabilities", str(probabilitiesPath)]
    argv.append("--force")
    return argv


def engineFolder() -> Path:
    """The folder that holds ``cadcore``: the CADExtension module folder, parent of this package."""
    return Path(__file__).resolve().parents[1]


def engineEnvironment(cadExtensionFolder: str | os.PathLike[str], existingPythonPath: str | None = None,
                      ) -> dict[str, str]:
    """Environment *additions* for the engine process (the runner lays them over the current environment).

    * ``PYTHONPATH`` starts with ``cadExtensionFolder`` so ``python -m cadcore`` finds the engine shipped inside the
      extension (Slicer puts module folders on ``sys.path`` of its own interpreter, not on a child's). Pass the
      current ``PYTHONPATH`` as ``existingPythonPath`` to keep it after ours.
    * ``PYTHONUNBUFFERED`` so each log line and tqdm redraw reaches the progress parser when written, not at exit.
    * ``PYTHONIOENCODING`` so an error message naming a non-ASCII path decodes the same on every platform.
    """
    entries: Sequence[str] = [str(Path(cadExtensionFolder))]
    if existingPythonPath:
        entries = [*entries, *(p for p in existingPythonPath.split(os.pathsep) if p and p != entries[0])]
    return {"PYTHONPATH": os.pathsep.join(entries), "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
