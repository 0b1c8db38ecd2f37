"""Where models live and how their files are named and hashed, shared by packages and bundles.

Search order: the packages shipped inside cadcore (``cadcore/models/<id>``), then the user folder (``$CAD_MODELS``,
default ``~/.cadextension/models``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from cadcore.errors import CadError
from cadcore.io.writing import refuse_existing

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "models"  # cadcore/models/<id>: data, not code


def user_models_dir() -> Path:
    """The user's model folder (``$CAD_MODELS`` or ``~/.cadextension/models``)."""
    return Path(os.environ.get("CAD_MODELS") or Path.home() / ".cadextension" / "models")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def shipped_models_dir() -> Path:
    """The folder of shipped packages (read at call time, so tests can stand in their own)."""
    return SHIPPED_MODELS


def is_shipped(folder: Path) -> bool:
    """Whether a model folder is one of the shipped ones (they win over a user model of the same id)."""
    return Path(folder).resolve().parent == shipped_models_dir().resolve()


def registry_folders() -> list[Path]:
    return [shipped_models_dir(), user_models_dir()]


def refuse_links(folder: Path) -> None:
    """Refuse, naming it, a symbolic link (or a fifo, device or socket) anywhere in ``folder``, the folder included.

    An import copies a folder from somewhere the user downloaded; a link inside it could make the copy pick up any
    file the user can read (``weights -> ~/.ssh``), and a fifo would hang the copy. Nothing is followed: the walk
    lists links without entering them."""
    folder = Path(folder)
    if folder.is_symlink():
        raise CadError("is a symbolic link; imports never follow links (pass the real folder)", folder)
    if not folder.is_dir():
        raise CadError("not a folder", folder)
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(root) / name
            if path.is_symlink():
                raise CadError(f"is a symbolic link inside the model folder {folder}; imports never follow links",
                               path)
            if name in files and not path.is_file():
                raise CadError("is not a regular file (model folders hold files and folders only)", path)


def install_target(model_id: str) -> Path:
    """``$CAD_MODELS/<model_id>``, asserted to be a direct child of the user folder whatever the id holds (ids are
    checked when a card is read; this is the second lock on the same door)."""
    root = user_models_dir()
    target = root / model_id
    if (not model_id or model_id in (".", "..") or Path(model_id).name != model_id or target.is_symlink()
            or target.resolve().parent != root.resolve()):
        raise CadError(f"model id {model_id!r} would install outside the model folder {root}", target)
    return target


def install(folder: Path, model_id: str, force: bool, check: Callable[[Path], object] | None = None) -> Path:
    """Copy a checked model folder to ``$CAD_MODELS/<model_id>`` (replacing one only with ``force``); the target.

    The copy goes to a hidden sibling first, without following links (``folder`` was refused if it held any), is
    checked there by ``check`` (the files installed are the files verified, even if the source changed meanwhile),
    and only then takes the target's name; any failure leaves the registry as it was."""
    folder = Path(folder)
    refuse_links(folder)
    target = install_target(model_id)
    refuse_existing(target.exists(), "a model with this id is already installed", target, force, verb="replace it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model_id}.", suffix=".importing", dir=target.parent))
    except OSError as exc:
        raise CadError(f"cannot write to the model folder ({exc.strerror or exc})", target.parent) from exc
    try:
        copy = staging / "model"
        try:
            shutil.copytree(folder, copy, symlinks=True)
        except (OSError, shutil.Error) as exc:
            raise CadError(f"cannot copy the model folder ({' '.join(str(exc).split())[:200]})", folder) from exc
        refuse_links(copy)
        if check is not None:
            check(copy)
        replaced = staging / "replaced"
        if target.exists():
            os.replace(target, replaced)
        try:
            os.replace(copy, target)
        except OSError as exc:
            if replaced.exists():
                os.replace(replaced, target)
            raise CadError(f"cannot install the model ({exc.strerror or exc})", target) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
