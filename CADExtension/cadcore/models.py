"""Model packages (``model.json`` + ``model.safetensors``) and the registry that finds them.

A package is a folder. ``model.json`` is the model card: task, network spec, labels (names, colours, terminology),
preprocessing (orientation, spacing, normalisation), inference settings, training data and metrics, and the sha256 of
the weights. Weights are safetensors, never pickles, and their hash is checked before they are loaded.

Registry search order: packages shipped inside cadcore (``cadcore/models/<id>``), then the user folder
(``$CAD_MODELS``, default ``~/.cadextension/models``). A path to a package folder works anywhere an id does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadcore.errors import CadError

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
SHIPPED_MODELS = Path(__file__).parent / "models"
REQUIRED_FIELDS = ("id", "task", "network", "version")
TASKS = ("segmentation", "classification")


def user_models_dir() -> Path:
    """The user's model folder (``$CAD_MODELS`` or ``~/.cadextension/models``)."""
    return Path(os.environ.get("CAD_MODELS") or Path.home() / ".cadextension" / "models")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelPackage:
    """A model card and where its files are."""

    folder: Path
    card: dict[str, Any] = field(repr=False)

    @property
    def id(self) -> str:
        return str(self.card["id"])

    @property
    def task(self) -> str:
        return str(self.card["task"])

    @property
    def weights_path(self) -> Path:
        return self.folder / self.card.get("weights", {}).get("file", WEIGHTS_NAME)

    @property
    def labels(self) -> list[dict[str, Any]]:
        """Foreground labels: ``[{"value", "name", "color", "terminology"?}]`` (background is implicit)."""
        return list(self.card.get("labels", []))

    def label_names(self) -> dict[int, str]:
        return {int(label["value"]): str(label["name"]) for label in self.labels}

    def verify(self) -> str:
        """Check the weights exist and match the card's sha256; return the hash."""
        expected = self.card.get("weights", {}).get("sha256")
        if not self.weights_path.exists():
            raise CadError("model weights file is missing", self.weights_path)
        actual = sha256_of(self.weights_path)
        if not expected:
            raise CadError("model card has no weights sha256; refusing unverified weights", self.folder / CARD_NAME)
        if actual != expected:
            raise CadError(
                f"weights sha256 mismatch (card {expected[:12]}…, file {actual[:12]}…); the file is corrupt or altered",
                self.weights_path,
            )
        return actual

    def load_state_dict(self) -> dict[str, Any]:
        """Verified weights as a state dict (safetensors: no code runs while loading)."""
        from safetensors.torch import load_file

        self.verify()
        try:
            return load_file(str(self.weights_path))
        except Exception as exc:  # safetensors raises its own error types
            raise CadError(f"cannot read weights ({exc})", self.weights_path) from exc

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.card.get("version"),
            "task": self.task,
            "modality": self.card.get("modality"),
            "description": self.card.get("description", ""),
            "labels": {str(k): v for k, v in self.label_names().items()},
            "path": str(self.folder),
        }


def read_card(folder: Path) -> dict[str, Any]:
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise CadError(f"not a model package (no {CARD_NAME})", folder)
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CadError(f"cannot parse model card ({exc})", card_path) from exc
    missing = [name for name in REQUIRED_FIELDS if name not in card]
    if missing:
        raise CadError(f"model card lacks required fields: {', '.join(missing)}", card_path)
    if card["task"] not in TASKS:
        raise CadError(f"unknown task {card['task']!r} (expected one of {', '.join(TASKS)})", card_path)
    return card


def registry_folders() -> list[Path]:
    return [SHIPPED_MODELS, user_models_dir()]


def list_models() -> list[ModelPackage]:
    """Every package in the registry; the first of a given id wins (shipped before user)."""
    found: dict[str, ModelPackage] = {}
    for root in registry_folders():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / CARD_NAME).is_file()):
            try:
                package = ModelPackage(folder, read_card(folder))
            except CadError:
                continue
            found.setdefault(package.id, package)
    return list(found.values())


def find_model(model: str | Path) -> ModelPackage:
    """Resolve a registry id or a package folder path."""
    path = Path(model)
    if path.is_dir():
        return ModelPackage(path, read_card(path))
    for package in list_models():
        if package.id == str(model):
            return package
    known = ", ".join(sorted(p.id for p in list_models())) or "none"
    raise CadError(f"unknown model (not a package folder nor a registered id; registered: {known})", model)


def find_model_or_bundle(model: str | Path) -> Any:
    """Like :func:`find_model`, but a MONAI bundle folder (or an installed bundle's id) gives a
    :class:`cadcore.bundle.BundleModel`; only ``cad segment`` and ``cad models`` accept bundles."""
    from cadcore.bundle import list_bundles, looks_like_bundle, read_bundle

    path = Path(model)
    if looks_like_bundle(path):
        return read_bundle(path)
    try:
        return find_model(model)
    except CadError:
        if path.is_dir():
            raise
        for bundle in list_bundles():
            if bundle.id == str(model):
                return bundle
        raise


def save_package(folder: Path, card: dict[str, Any], state_dict: dict[str, Any]) -> ModelPackage:
    """Write weights and card (with the weights' sha256) atomically into ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp_weights = folder / f".{WEIGHTS_NAME}.tmp"
    save_file(unique_tensors(state_dict), str(tmp_weights))
    os.replace(tmp_weights, folder / WEIGHTS_NAME)
    card = dict(card)
    card["weights"] = {"file": WEIGHTS_NAME, "sha256": sha256_of(folder / WEIGHTS_NAME), "format": "safetensors"}
    tmp_card = folder / f".{CARD_NAME}.tmp"
    tmp_card.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp_card, folder / CARD_NAME)
    return ModelPackage(folder, card)


def unique_tensors(state_dict: dict[str, Any]) -> dict[str, Any]:
    """One entry per tensor storage: some MONAI networks (DynUNet) register the same weights under two names.

    safetensors refuses aliased tensors, and cloning them would double the file; :func:`load_weights` restores the
    aliases from the network itself.
    """
    by_storage: dict[tuple[int, int], list[str]] = {}
    for name, tensor in state_dict.items():
        by_storage.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset()), []).append(name)
    keep = {min(names, key=lambda n: ("skip_layers." in n, n)) for names in by_storage.values()}
    return {name: state_dict[name].detach().cpu().contiguous().clone() for name in state_dict if name in keep}


def load_weights(network: Any, state: dict[str, Any], source: str | Path = "") -> None:
    """Load weights strictly, except for keys that are aliases of loaded tensors inside ``network``."""
    own = network.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise CadError(f"weights do not fit the network (unexpected: {', '.join(unexpected[:3])}…)", source or None)
    loaded = {(own[name].untyped_storage().data_ptr(), own[name].storage_offset()) for name in state}
    missing = [name for name in own if name not in state and
               (own[name].untyped_storage().data_ptr(), own[name].storage_offset()) not in loaded]
    if missing:
        raise CadError(f"weights do not fit the network (missing: {', '.join(missing[:3])}…)", source or None)
    try:
        network.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CadError(f"weights do not fit the network ({str(exc).splitlines()[0]})", source or None) from exc


def import_package(source: Path, force: bool = False) -> ModelPackage:
    """Copy a verified package folder (or MONAI bundle folder) into the user registry."""
    from cadcore.bundle import import_bundle, looks_like_bundle

    if looks_like_bundle(Path(source)):
        return import_bundle(Path(source), force)  # type: ignore[return-value]
    package = find_model(source)
    package.verify()
    target = user_models_dir() / package.id
    if target.exists():
        if not force:
            raise CadError("a model with this id is already installed; pass --force to replace it", target)
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(package.folder, target)
    return ModelPackage(target, read_card(target))
