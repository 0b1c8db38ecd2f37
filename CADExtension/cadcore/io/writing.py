"""Writing outputs safely: checked before any work, written under a temporary name, read back, then published.

Every file the engine writes goes through :func:`atomic_path`, so a failure (a full disk, a signal, a racing
writer) never leaves a half-written file at the name a user (or the Slicer module) will read:

* :func:`check_output_path` / :func:`check_output_file` run before anything is computed: the name is not a folder,
  does not exist (unless ``--force``), and its folder exists and really takes a file (a probe file is created and
  removed: ``os.access`` alone is wrong for root and on read-only mounts).
* the file is written in a hidden folder beside its final name, then read back (:mod:`cadcore.io.readback`): not
  empty, header readable, every data byte present.
* it is published with ``os.replace`` where replacing was asked for, otherwise with an operation that fails if the
  name exists (a hard link), so of two processes writing one name the second is refused instead of replacing.

Any ``OSError`` on the way (ENOSPC, EACCES, EROFS, ...) becomes one :class:`CadError` naming the final file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from cadcore.errors import CadError, native_message
from cadcore.io.images import LABELMAP_SUFFIXES, suffix_of
from cadcore.io.native import quiet_native
from cadcore.io.readback import check_image_file, check_json_file, check_nonempty, disk_hint

Check = Callable[[Path, Path], object]

_REPLACE: ContextVar[bool] = ContextVar("cad_replace_outputs", default=True)
_JOURNAL: ContextVar[list[Path] | None] = ContextVar("cad_published_outputs", default=None)
_HELD = [0, 0]  # [depth of _interrupts_held blocks, an interrupt is waiting]
_NO_HARD_LINKS = {errno.EPERM, errno.EMLINK, errno.ENOSYS, errno.EXDEV, getattr(errno, "ENOTSUP", -1),
                  getattr(errno, "EOPNOTSUPP", -1)}


def refuse_existing(exists: bool, what: str, where: str | Path, force: bool, resume: bool | None = None,
                    verb: str = "overwrite it") -> None:
    """The one guard for anything a command would replace: ``what`` (e.g. "output exists") is refused unless
    ``--force`` says to {verb}, or, where a run can be continued (``resume`` is not None), ``--resume`` says so."""
    if not exists or force or resume:
        return
    hint = f"pass --resume to continue or --force to {verb}" if resume is not None else f"pass --force to {verb}"
    raise CadError(f"{what}; {hint}", where)


def check_output_file(path: str | Path, force: bool, what: str = "output exists") -> Path:
    """An output file name checked before any work: not a folder (not even with ``--force``: that would delete a
    folder in place of a file), not existing unless forced, in an existing folder that takes a new file."""
    path = Path(path)
    if path.is_dir():
        raise CadError("is a folder; give a file name for the output", path)
    refuse_existing(path.exists() or path.is_symlink(), what, path, force)
    check_writable_folder(path)
    return path


def check_output_path(path: str | Path, force: bool, allowed: tuple[str, ...] = LABELMAP_SUFFIXES) -> Path:
    """Validate an image output before any work starts: known suffix, then :func:`check_output_file`."""
    path = Path(path)
    if suffix_of(path) not in allowed:
        raise CadError(f"unsupported output format (use one of {', '.join(allowed)})", path)
    return check_output_file(path, force)


def check_output_folder(path: str | Path) -> Path:
    """A folder the command will create or fill (``cad train -o``): not a file, and its nearest existing ancestor
    is a folder that takes a new file (the folder is created later, with its parents)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CadError("is a file; give a folder for the output", path)
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise CadError("output folder is inside a file", existing)
    _probe(existing, path)
    return path


def check_writable_folder(path: str | Path) -> None:
    """``path``'s folder exists and takes a new file."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise CadError("output folder does not exist" if not folder.exists() else "output folder is not a folder",
                       folder)
    _probe(folder, path)


def _probe(folder: Path, path: Path) -> None:
    """Create and remove a hidden file in ``folder``: ``os.access`` is not enough, as root passes it whatever the
    mode bits, and it knows nothing of read-only mounts (for root), ACLs or quotas. Errors name ``path``."""
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise CadError(f"cannot write in the output folder {folder} ({exc.strerror or exc})", path) from exc


@contextlib.contextmanager
def publishing(replace: bool) -> Iterator[list[Path]]:
    """Within the block, :func:`atomic_path` replaces existing files only if ``replace`` (a command's ``--force``);
    otherwise a file that appeared since the checks (another process) is refused. Outside, it replaces (library
    callers such as training rewrite their own files).

    Yields the list of every file published in the block, recorded with interrupts held back between the rename
    and the record, so a rollback removes exactly what this run published: nothing more (a racing process's file), and
    nothing less (a SIGTERM landing just after a rename)."""
    published: list[Path] = []
    tokens = _REPLACE.set(replace), _JOURNAL.set(published)
    try:
        yield published
    finally:
        _JOURNAL.reset(tokens[1])
        _REPLACE.reset(tokens[0])


@contextlib.contextmanager
def all_or_none(replace: bool) -> Iterator[list[Path]]:
    """:func:`publishing` for a command's set of outputs: when the block fails (a full disk, a racing writer, a
    signal), every file it had already published is removed, so no output is left without its companions."""
    with publishing(replace) as published:
        try:
            yield published
        except BaseException:
            for path in published:
                path.unlink(missing_ok=True)
            raise


def interrupts_held() -> bool:
    """True while a file is being published and recorded: the CLI's signal handler then defers its interrupt
    (:func:`defer_interrupt`), which is raised as soon as the record is made."""
    return _HELD[0] > 0


def defer_interrupt() -> None:
    _HELD[1] = 1


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Publish and record as one step: an interrupt arriving in between is raised at the end of the block (a
    Python-level hold: a signal mask would not do, since any thread may receive the signal)."""
    _HELD[0] += 1
    try:
        yield
    finally:
        _HELD[0] -= 1
        waiting = _HELD[0] == 0 and _HELD[1]
        if waiting:
            _HELD[1] = 0  # cleared even when the block failed: its own exception already stops the command
    if waiting:
        raise KeyboardInterrupt


def os_error(exc: OSError, path: str | Path) -> CadError:
    """The one-line error for an OSError while writing ``path`` (named by its final name, not a temporary one)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return CadError(f"could not be written: {reason}", path)


@contextlib.contextmanager
def atomic_path(path: str | Path, check: Check | None = check_nonempty) -> Iterator[Path]:
    """Yield a path with ``path``'s name in a hidden folder beside it; check it, then publish it, only on success.

    The private folder is on the same file system, so the final rename (or link) is atomic. It also catches the
    data file that detached-header formats write next to their header (``.mhd`` → ``.zraw``, ``.nhdr`` →
    ``.raw.gz``): that file is published first, under its final name, so a header never names a missing or
    temporary file. Files are created by the writer itself, so they get the user's usual permissions (a ``mkstemp``
    file would stay 0600). ``check(tmp, path)`` reads the result back before it is published.
    """
    path = Path(path)
    replace = _REPLACE.get()
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as exc:
        raise os_error(exc, path) from exc
    tmp = tmp_dir / path.name
    try:
        try:
            yield tmp
            if check is not None:
                check(tmp, path)
            _publish(tmp_dir, tmp, path, replace)
        except OSError as exc:
            raise os_error(exc, path) from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _publish(tmp_dir: Path, tmp: Path, path: Path, replace: bool) -> None:
    moves = [(c, path.parent / c.name) for c in sorted(tmp_dir.iterdir()) if c != tmp] + [(tmp, path)]
    journal = _JOURNAL.get()
    published: list[Path] = []
    try:
        for source, target in moves:
            if replace and target.is_dir():
                raise CadError("is a folder; give a file name for the output", target)
            with _interrupts_held():
                if replace:
                    os.replace(source, target)
                else:
                    _publish_new(source, target)
                published.append(target)
                if journal is not None:
                    journal.append(target)
    except BaseException:
        if not replace:  # a detached header's data file without its header is no use to anyone
            for target in published:
                target.unlink(missing_ok=True)
        raise


def _publish_new(source: Path, target: Path) -> None:
    """Move ``source`` to ``target`` only if ``target`` does not exist, atomically: a hard link fails on an existing
    name. Where hard links are not supported, an exclusive create reserves the name before the rename."""
    try:
        try:
            os.link(source, target)
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno not in _NO_HARD_LINKS:
                raise
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.replace(source, target)
        else:
            source.unlink()
    except FileExistsError as exc:
        raise CadError("output exists (written by another process meanwhile); pass --force to overwrite it",
                       target) from exc


def write_sitk(image: sitk.Image, tmp: Path, final: Path, compress: bool = True) -> None:
    """``sitk.WriteImage`` with the native library's stderr silenced and its errors as one line naming ``final``."""
    try:
        with quiet_native():
            sitk.WriteImage(image, str(tmp), compress)
    except RuntimeError as exc:
        raise CadError(f"could not be written: {native_message(exc)}{disk_hint(tmp.parent)}", final) from exc


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write any SimpleITK image atomically (format from the suffix), read back before it is published."""
    path = Path(path)
    with atomic_path(path, check_image_file) as tmp:
        write_sitk(image, tmp, path, compress)
    return path


def write_json(path: str | Path, value: Any) -> Path:
    """Write a JSON document (sidecar, report, dataset description) atomically, indented, newline-terminated."""
    path = Path(path)
    text = json.dumps(value, indent=2) + "\n"
    with atomic_path(path, check_json_file) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
