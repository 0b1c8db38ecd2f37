"""Where models live and how their files are named and hashed, shared by packages and bundles.

Search order: the packages shipped inside cadcore (``cadcore/models/<id>``), then the user folder (``$CAD_MODELS``,
default ``~/.cadextension/models``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

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


def registry_folders() -> list[Path]:
    return [SHIPPED_MODELS, user_models_dir()]


def install(folder: Path, model_id: str, force: bool) -> Path:
    """Copy a checked model folder to ``$CAD_MODELS/<model_id>`` (replacing one only with ``force``); the target."""
    target = user_models_dir() / model_id
    refuse_existing(target.exists(), "a model with this id is already installed", target, force, verb="replace it")
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(folder, target)
    return target
