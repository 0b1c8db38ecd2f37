"""Writing outputs safely: refuse to replace what exists unless asked, write under a temporary name, then rename.

Every file the engine writes goes through :func:`atomic_path`, so a failure never leaves a half-written file at the
name a user (or the Slicer module) will read, and :func:`refuse_existing` is the one "exists, pass --force" guard.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.io.images import LABELMAP_SUFFIXES, suffix_of


def refuse_existing(exists: bool, what: str, where: str | Path, force: bool, resume: bool | None = None,
                    verb: str = "overwrite it") -> None:
    """The one guard for anything a command would replace: ``what`` (e.g. "output exists") is refused unless
    ``--force`` says to {verb}, or, where a run can be continued (``resume`` is not None), ``--resume`` says so."""
    if not exists or force or resume:
        return
    hint = f"pass --resume to continue or --force to {verb}" if resume is not None else f"pass --force to {verb}"
    raise CadError(f"{what}; {hint}", where)


def check_output_path(path: str | Path, force: bool, allowed: tuple[str, ...] = LABELMAP_SUFFIXES) -> Path:
    """Validate an output path before any work starts: known suffix, writable folder, no overwrite unless forced."""
    path = Path(path)
    if suffix_of(path) not in allowed:
        raise CadError(f"unsupported output format (use one of {', '.join(allowed)})", path)
    refuse_existing(path.exists(), "output exists", path, force)
    if not path.parent.exists():
        raise CadError("output folder does not exist", path.parent)
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a path with ``path``'s name in a hidden folder beside it; move the result into place only on success.

    The private folder is on the same file system, so the final rename is atomic. It also catches the data file that
    detached-header formats write next to their header (``.mhd`` → ``.zraw``, ``.nhdr`` → ``.raw.gz``): that file is
    moved first, under its final name, so a header never names a missing or temporary file. Files are created by the
    writer itself, so they get the user's usual permissions (a ``mkstemp`` file would stay 0600).
    """
    path = Path(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp = tmp_dir / path.name
    try:
        yield tmp
        for companion in tmp_dir.iterdir():
            if companion != tmp:
                os.replace(companion, path.parent / companion.name)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write any SimpleITK image atomically (format from the suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def write_json(path: str | Path, value: Any) -> Path:
    """Write a JSON document (sidecar, report, dataset description) atomically, indented, newline-terminated."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")
    return path
