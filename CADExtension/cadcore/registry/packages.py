"""Model packages (``model.json`` + ``model.safetensors``) and the registry that finds them.

A package is a folder. ``model.json`` is the model card: task, network spec, labels (names, colours, terminology),
preprocessing (orientation, spacing, normalisation), inference settings, training data and metrics, and the sha256 of
the weights. Weights are safetensors, never pickles, and their hash is checked before they are loaded.

Registry search order: packages shipped inside cadcore (``cadcore/models/<id>``), then the user folder
(``$CAD_MODELS``, default ``~/.cadextension/models``). A path to a package folder works anywhere an id does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadcore.errors import CadError
from cadcore.registry.card import ModelCard, ModelSummary
from cadcore.registry.card_reader import parse_card
from cadcore.registry.locations import CARD_NAME, WEIGHTS_NAME, registry_folders, sha256_of
from cadcore.registry.safetensors_header import read_header


@dataclass(frozen=True)
class ModelPackage:
    """A model card and where its files are."""

    folder: Path
    card: ModelCard = field(repr=False)
    # The weights file's (device, inode, size, mtime) when :meth:`verify` last passed, with its hash: ``cad segment``
    # verifies before reading the image, then loads, and the load need not hash the same unchanged file again.
    _verified: dict[tuple[int, ...], str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def task(self) -> str:
        return self.card.task

    @property
    def name(self) -> str:
        """The card's display name (its id when it has none)."""
        return self.card.name or self.card.id

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def weights_path(self) -> Path:
        return self.folder / self.card.weights.file

    def as_json(self) -> dict[str, Any]:
        """What ``cad models show`` prints: the card as written."""
        return self.card.to_dict()

    @property
    def labels(self) -> list[dict[str, Any]]:
        """Foreground labels: ``[{"value", "name", "color", "terminology"?}]`` (background is implicit)."""
        return self.card.label_dicts()

    def label_names(self) -> dict[int, str]:
        return self.card.label_names()

    def verify(self) -> str:
        """Check the weights before anything reads them as tensors; return their sha256.

        In order: the file exists, the card pins a sha256, the file is a complete safetensors file (its header parsed
        here, not by loading: a pickle or zip with a matching hash is still refused), the hash matches, and every
        tensor's name and shape fit the networks the card describes (built on the meta device, so a card claiming
        a huge network costs nothing). Every refusal names the weights file or ``model.json``."""
        from cadcore.registry.architectures import check_weights_fit  # torch: not needed to list or show models

        expected = self.card.weights.sha256
        if not self.weights_path.is_file():
            raise CadError("model weights file is missing", self.weights_path)
        if not expected:
            raise CadError("model card has no weights sha256; refusing unverified weights", self.folder / CARD_NAME)
        stat = self.weights_path.stat()
        signature = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if self._verified.get(signature) == expected:  # this file, unchanged, passed with this hash
            return expected
        tensors = read_header(self.weights_path)
        actual = sha256_of(self.weights_path)
        if actual != expected:
            raise CadError(
                f"weights sha256 mismatch (card {expected[:12]}…, file {actual[:12]}…); the file is corrupt or altered",
                self.weights_path,
            )
        check_weights_fit(self.card, tensors, self.weights_path)
        self._verified.clear()
        self._verified[signature] = actual
        return actual

    def load_state_dict(self) -> dict[str, Any]:
        """Verified weights as a state dict (safetensors: no code runs while loading; shapes checked first)."""
        from safetensors.torch import load_file

        self.verify()
        try:
            return load_file(str(self.weights_path))
        except Exception as exc:  # safetensors raises its own error types
            raise CadError(f"cannot read weights ({' '.join(str(exc).split())})", self.weights_path) from exc

    def summary(self) -> ModelSummary:
        return ModelSummary(self.id, self.card.version, self.task, self.card.modality, self.card.description,
                            {str(k): v for k, v in self.label_names().items()}, str(self.folder),
                            guided=self.card.interactive is not None)


def read_card(folder: Path) -> ModelCard:
    """The validated card of a package folder; every error names ``model.json`` (and the field)."""
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise CadError(f"not a model package (no {CARD_NAME})", folder)
    try:
        data = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CadError(f"cannot parse model card ({exc})", card_path) from exc
    return parse_card(data, card_path)


def all_packages() -> list[ModelPackage]:
    """Every readable package in the registry folders, shipped first, shadowed ones included."""
    found = []
    for root in registry_folders():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / CARD_NAME).is_file()):
            try:
                found.append(ModelPackage(folder, read_card(folder)))
            except CadError:
                continue
    return found


def list_models() -> list[ModelPackage]:
    """Every package in the registry; the first of a given id wins (shipped before user: shipped models are the
    vetted ones, so a user package cannot silently replace one)."""
    found: dict[str, ModelPackage] = {}
    for package in all_packages():
        found.setdefault(package.id, package)
    return list(found.values())


def shadowed_models() -> list[ModelPackage]:
    """User packages that are not used because a package earlier in the search order has their id."""
    winners = {package.id: package.folder for package in list_models()}
    return [package for package in all_packages() if winners[package.id] != package.folder]


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


def save_package(folder: Path, card: dict[str, Any], state_dict: dict[str, Any]) -> ModelPackage:
    """Write weights and card (with the weights' sha256) atomically into ``folder``; the card is validated first,
    so no package is written that the engine would refuse to read."""
    from safetensors.torch import save_file

    parse_card(card, folder / CARD_NAME)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_weights = folder / f".{WEIGHTS_NAME}.tmp"
    save_file(unique_tensors(state_dict), str(tmp_weights))
    os.replace(tmp_weights, folder / WEIGHTS_NAME)
    card = dict(card)
    card["weights"] = {"file": WEIGHTS_NAME, "sha256": sha256_of(folder / WEIGHTS_NAME), "format": "safetensors"}
    tmp_card = folder / f".{CARD_NAME}.tmp"
    tmp_card.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp_card, folder / CARD_NAME)
    return ModelPackage(folder, parse_card(card, folder / CARD_NAME))


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
