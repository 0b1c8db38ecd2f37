"""MONAI Model Zoo bundles as segmentation models (``cad segment -m BUNDLE_DIR``): what a bundle is.

A bundle is a folder with ``configs/inference.json`` (the MONAI bundle config: ``network_def``, ``preprocessing``,
``inferer``, ``postprocessing``), ``configs/metadata.json`` (labels in ``network_data_format.outputs.pred.channel_def``)
and ``models/model.pt`` (weights). This module recognises, checks, lists and imports bundles and reads their
labels; :mod:`cadcore.segmentation.bundle_inference` runs them with their own network, transforms and inferer
through ``monai.bundle``.

Trust: weights are read with ``torch.load(weights_only=True)`` only, so a pickled module or a TorchScript archive is
refused without running it. The config itself is code (``_target_`` and ``$`` expressions are evaluated, as in
MONAI): run and import only bundles whose source you trust.
"""

from __future__ import annotations

import colorsys
import importlib.util
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadcore.errors import CadError
from cadcore.registry.card import ModelSummary
from cadcore.registry.locations import CARD_NAME, install, registry_folders, sha256_of

CONFIG_FILE = Path("configs") / "inference.json"
METADATA_FILE = Path("configs") / "metadata.json"
WEIGHTS_FILE = Path("models") / "model.pt"
REQUIRED_ITEMS = ("network_def", "preprocessing", "inferer")  # the config items cad runs (postprocessing optional)


def looks_like_bundle(folder: Path) -> bool:
    """A folder meant as a bundle (not a cadcore package): it has ``configs/`` or ``models/model.pt``, no card.

    Deliberately looser than :func:`is_bundle`, so a bundle missing a file gets "bundle lacks X", not "no model.json".
    """
    folder = Path(folder)
    return folder.is_dir() and not (folder / CARD_NAME).exists() and (
        (folder / "configs").is_dir() or (folder / WEIGHTS_FILE).is_file())


def is_bundle(folder: Path) -> bool:
    folder = Path(folder)
    return all((folder / part).is_file() for part in (CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE))


def label_color(value: int) -> list[float]:
    """A fixed colour per label value (golden-ratio hues): the same label always looks the same, run after run."""
    red, green, blue = colorsys.hsv_to_rgb((0.08 + value * 0.618033988749895) % 1.0, 0.65, 0.92)
    return [round(red, 4), round(green, 4), round(blue, 4)]


@dataclass
class BundleModel:
    """A MONAI bundle folder, shaped like :class:`.packages.ModelPackage` where ``cad`` needs it to be."""

    folder: Path
    metadata: dict[str, Any] = field(repr=False)
    _state: dict[str, Any] | None = field(default=None, repr=False)

    format = "bundle"
    task = "segmentation"

    @property
    def id(self) -> str:
        """Registry id: the folder name (the Model Zoo's bundle name, e.g. ``spleen_ct_segmentation``)."""
        return self.folder.name

    @property
    def name(self) -> str:
        """The bundle's own name from its metadata (the sidecar's ``model_name``; ``model`` is the registry id)."""
        return str(self.metadata.get("name") or self.folder.name)

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def input_key(self) -> str:
        inputs = self.metadata.get("network_data_format", {}).get("inputs", {})
        return next(iter(inputs), "image")

    @property
    def labels(self) -> list[dict[str, Any]]:
        """Foreground labels from the output's ``channel_def`` (value 0 is background, as in every cadcore labelmap)."""
        outputs = self.metadata.get("network_data_format", {}).get("outputs", {})
        output = outputs.get("pred") or next(iter(outputs.values()), {})
        channels = output.get("channel_def", {}) if isinstance(output, dict) else {}
        labels = []
        for key, name in sorted(channels.items(), key=lambda item: int(item[0])):
            if int(key) != 0:
                labels.append({"value": int(key), "name": str(name), "color": label_color(int(key))})
        return labels

    @property
    def version(self) -> str | None:
        version = self.metadata.get("version")
        return None if version is None else str(version)

    @property
    def modality(self) -> str | None:
        inputs = self.metadata.get("network_data_format", {}).get("inputs", {})
        return inputs.get(self.input_key, {}).get("modality")

    def label_names(self) -> dict[int, str]:
        """{value: name} of the foreground labels, as :meth:`.packages.ModelPackage.label_names` gives."""
        return {int(label["value"]): str(label["name"]) for label in self.labels}

    def window(self) -> tuple[list[int] | None, list[float] | None]:
        """(window size in voxels, working spacing in mm) as the bundle states them, each None when it does not.

        The window is the inferer's ``roi_size`` (the window the bundle really runs), else the input's
        ``spatial_shape`` in the metadata; the spacing is the ``pixdim`` of a ``Spacingd`` in the preprocessing. Read
        from the JSON (``@`` references followed) without evaluating anything, so ``$`` expressions count as unstated.
        ``cad interact`` sizes a prompt's region with it, as it does with a package's patch size and spacing.
        """
        try:
            config = json.loads((self.folder / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            config = {}
        config = config if isinstance(config, dict) else {}
        inferer = resolve_reference(config, config.get("inferer"))
        roi_size = resolve_reference(config, inferer.get("roi_size")) if isinstance(inferer, dict) else None
        roi = positive_triple(roi_size, int)
        if roi is None:
            inputs = self.metadata.get("network_data_format", {}).get("inputs", {})
            roi = positive_triple(inputs.get(self.input_key, {}).get("spatial_shape"), int)
        pixdim = None
        preprocessing = resolve_reference(config, config.get("preprocessing"))
        steps = resolve_reference(config, preprocessing.get("transforms")) if isinstance(preprocessing, dict) else None
        for step in steps if isinstance(steps, list) else []:
            step = resolve_reference(config, step)
            if isinstance(step, dict) and str(step.get("_target_", "")).split(".")[-1] in ("Spacingd", "Spacing"):
                pixdim = positive_triple(resolve_reference(config, step.get("pixdim")), float)
        return roi, pixdim

    def as_json(self) -> dict[str, Any]:
        """A card-like summary for ``cad models show``, with the full metadata."""
        return {"id": self.id, "name": self.name, "version": self.metadata.get("version"), "task": self.task,
                "format": "MONAI bundle", "modality": self.modality,
                "description": self.metadata.get("description", ""), "labels": self.labels,
                "metadata": self.metadata}

    def summary(self) -> ModelSummary:
        return ModelSummary(self.id, self.version, self.task, self.modality, self.metadata.get("description", ""),
                            {str(lb["value"]): lb["name"] for lb in self.labels}, str(self.folder), self.format)

    def verify(self) -> str:
        """Every file present, every package the config names installed, the weights a plain state dict (loaded
        without unpickling code); returns their sha256. Cheap and evaluates nothing, so ``cad segment`` fails here,
        before its progress bar starts, on the common problems."""
        for part in (CONFIG_FILE, WEIGHTS_FILE):
            if not (self.folder / part).is_file():
                raise CadError(f"MONAI bundle lacks {part.as_posix()}", self.folder)
        self.check_packages()
        self.load_state_dict()
        return sha256_of(self.weights_path)

    def check_packages(self) -> None:
        """Refuse, naming it, a package that the config's imports or used ``_target_`` paths need and that is absent."""
        try:
            config = json.loads((self.folder / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CadError(f"cannot parse bundle config ({exc})", self.folder / CONFIG_FILE) from exc
        if not isinstance(config, dict):
            raise CadError("bundle config is not a JSON object", self.folder / CONFIG_FILE)
        imports = [m.group(1) for line in config.get("imports", []) if isinstance(line, str)
                   for m in [re.match(r"\$\s*(?:import|from)\s+([\w.]+)", line)] if m]
        used = [config.get(item) for item in (*REQUIRED_ITEMS, "postprocessing")]
        for module in [*imports, *(t for t in config_targets(used) if "." in t)]:
            top = module.split(".")[0]
            local = (self.folder / top).is_dir() or (self.folder / f"{top}.py").is_file()
            if not local and importlib.util.find_spec(top) is None:
                raise CadError(f"MONAI bundle {self.name!r} needs the package {top!r}, which is not installed "
                               f"(pip install it into cad's environment)", self.folder)

    def load_state_dict(self) -> dict[str, Any]:
        """``models/model.pt`` as tensors, via ``torch.load(weights_only=True)``; anything else is refused unread."""
        if self._state is not None:
            return self._state
        import torch

        path = self.weights_path
        try:
            with warnings.catch_warnings():  # "looks like a TorchScript archive": our one-line error says it better
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError (pickled module), RuntimeError (TorchScript), truncated zip…
            raise CadError(f"not a plain state dict of tensors, refused without unpickling it "
                           f"(a pickled module or TorchScript archive?; {type(exc).__name__})", path) from exc
        if isinstance(state, dict) and len(state) == 1 and next(iter(state)) in ("model", "state_dict"):
            state = next(iter(state.values()))  # CheckpointSaver's {"model": state_dict}, as CheckpointLoader takes
        if not isinstance(state, dict) or not state or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise CadError("not a state dict of tensors (expected {name: tensor})", path)
        self._state = state
        return state


def read_bundle(folder: Path) -> BundleModel:
    """A bundle folder → :class:`BundleModel`; a missing config, metadata or weights file is named."""
    folder = Path(folder)
    for part in (CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE):
        if not (folder / part).is_file():
            raise CadError(f"MONAI bundle lacks {part.as_posix()}", folder)
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CadError(f"cannot parse bundle metadata ({exc})", folder / METADATA_FILE) from exc
    if not isinstance(metadata, dict):
        raise CadError("bundle metadata is not a JSON object", folder / METADATA_FILE)
    bundle = BundleModel(folder, metadata)
    if not bundle.labels:
        raise CadError("bundle metadata names no labels (network_data_format.outputs.pred.channel_def)",
                       folder / METADATA_FILE)
    return bundle


def all_bundles() -> list[BundleModel]:
    """Every readable bundle in the registry folders (shipped, then ``$CAD_MODELS``), shadowed ones included."""
    found = []
    for root in registry_folders():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and is_bundle(p)):
            try:
                found.append(read_bundle(folder))
            except CadError:
                continue
    return found


def list_bundles() -> list[BundleModel]:
    """Bundles in the registry folders (shipped, then ``$CAD_MODELS``); broken ones are skipped, first id wins."""
    found: dict[str, BundleModel] = {}
    for bundle in all_bundles():
        found.setdefault(bundle.id, bundle)
    return list(found.values())


def import_bundle(source: Path, force: bool = False) -> BundleModel:
    """Copy a verified bundle into ``$CAD_MODELS/<folder name>`` (so ``-m <name>`` finds it); the copy is verified
    again before it takes its place."""
    bundle = read_bundle(Path(source))
    bundle.verify()
    target = install(bundle.folder, bundle.id, force, lambda copy: read_bundle(copy).verify())
    return read_bundle(target)


def config_targets(config: Any) -> list[str]:
    """Every ``_target_`` string in a config subtree."""
    if isinstance(config, dict):
        own = [config["_target_"]] if isinstance(config.get("_target_"), str) else []
        return own + [t for value in config.values() for t in config_targets(value)]
    if isinstance(config, list):
        return [t for value in config for t in config_targets(value)]
    return []


def resolve_reference(config: dict[str, Any], value: Any, hops: int = 8) -> Any:
    """Follow ``"@id"`` / ``"@id#key"`` references through the raw config (a ``$`` expression stays a string)."""
    while hops and isinstance(value, str) and value.startswith("@"):
        node: Any = config
        for key in value[1:].split("#"):
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return None
        value, hops = node, hops - 1
    return value


def positive_triple(value: Any, kind: type) -> list[Any] | None:
    """Three positive numbers (one number meaning all three axes; integers for ``kind`` int), else None."""
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(values, list) or len(values) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        return None
    if kind is int and not all(float(v).is_integer() for v in values):
        return None
    return [kind(v) for v in values]
