"""The model card (``model.json``) as a typed, read-only object, validated once when it is read.

A card used to be a raw dict read in about a hundred places, each with its own default and its own failure (a
``KeyError`` traceback, or a wrong default silently used). Now :meth:`ModelCard.parse` checks every field the engine
uses, naming ``model.json`` and the field in the one-line error, and the rest of the engine reads typed attributes.

Every network of a package is a :class:`Stage`: its network spec, preprocessing, inference settings and the prefix
of its tensors in ``model.safetensors``. The main network, a cascade's coarse and fine networks, a card's fast
network and the members of an ensemble are all stages, so "which weights go with which preprocessing" is answered in
one place (:meth:`Stage.weights_of`).

On disk nothing changes: ``format_version`` 1, the same JSON. Free-form sections the engine passes on as they are
(network ``params`` for MONAI, ``preprocessing``, ``postprocessing``, ``roi``) stay mappings, checked for the
values that are used; provenance (``training``, ``metrics`` and any other field) stays reachable as raw data through
:attr:`ModelCard.raw`, and :meth:`ModelCard.to_dict` gives a deep copy for writing a derived card.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadcore.errors import CadError

FORMAT_VERSION = 1
TASKS = ("segmentation", "classification")
INTERPOLATIONS = ("bspline", "linear")
NORMALIZATIONS = ("ct", "mr", "none")
BLEND_MODES = ("gaussian", "constant")
FAST_PREFIX = "fast."  # a card's own fast network is stored beside the main one under this prefix
COARSE_PREFIX, FINE_PREFIX = "coarse.", "fine."  # a cascade's two networks


@dataclass(frozen=True)
class Label:
    """A foreground label of a segmentation model (background, 0, is implicit)."""

    value: int
    name: str
    color: tuple[float, float, float] | None = None
    terminology: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The card's JSON form, as the labelmap writer and the sidecar take it."""
        entry: dict[str, Any] = {"value": self.value, "name": self.name}
        if self.color is not None:
            entry["color"] = list(self.color)
        if self.terminology is not None:
            entry["terminology"] = copy.deepcopy(dict(self.terminology))
        return entry


@dataclass(frozen=True)
class ClassLabel:
    """A class of a classification model; ``value`` is its output index."""

    value: int
    name: str


@dataclass(frozen=True)
class Inference:
    """Sliding-window settings (segmentation) and test-time augmentation (classification: ``tta == "flips"``)."""

    patch_size: tuple[int, int, int] | None = None
    overlap: float = 0.5
    mode: str = "gaussian"
    sw_batch_size: int = 2
    tta: str | None = None


@dataclass(frozen=True)
class Stage:
    """One network of a package and everything needed to run it."""

    role: str  # "main", "coarse", "fine", "fast" or an ensemble member's name
    network: Mapping[str, Any]  # {"name": MONAI class, "params": {...}}, as in the card
    preprocessing: Mapping[str, Any]
    inference: Inference
    weight_prefix: str = ""  # the stage's tensors are "<prefix><name>" in model.safetensors
    foreign_prefixes: tuple[str, ...] = ()  # other stages stored beside an unprefixed one

    def weights_of(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """This stage's tensors from the package's state dict, with the prefix taken off."""
        if self.weight_prefix:
            return {k[len(self.weight_prefix):]: v for k, v in state.items() if k.startswith(self.weight_prefix)}
        return {k: v for k, v in state.items() if not k.startswith(self.foreign_prefixes)}


@dataclass(frozen=True)
class Cascade:
    """A coarse network that finds the target before the fine (main) network segments its region."""

    coarse: Stage
    margin_mm: float = 10.0
    min_component_fraction: float = 0.1


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    prior: tuple[float, ...] | None = None  # real class frequencies (training sampled classes evenly)


@dataclass(frozen=True)
class WeightsFile:
    file: str = "model.safetensors"
    sha256: str | None = None
    format: str | None = None


@dataclass(frozen=True)
class ModelCard:
    """A validated ``model.json``; build it with :meth:`parse`."""

    id: str
    version: str
    task: str
    network: Mapping[str, Any]
    format_version: int = FORMAT_VERSION
    name: str | None = None
    description: str = ""
    modality: str | None = None
    labels: tuple[Label, ...] = ()
    classes: tuple[ClassLabel, ...] = ()
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    inference: Inference = Inference()
    postprocessing: Mapping[str, Any] = field(default_factory=dict)
    cascade: Cascade | None = None
    fast: Mapping[str, Any] | None = None
    ensemble_members: tuple[str, ...] = ()
    roi: Mapping[str, Any] = field(default_factory=dict)
    calibration: Calibration = Calibration()
    gradcam_layer: str = "layer4"
    weights: WeightsFile = WeightsFile()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the JSON as read: provenance and all
    path: Path | None = field(default=None, compare=False)  # where it was read from, for error messages

    @classmethod
    def parse(cls, data: Any, path: str | Path | None = None) -> ModelCard:
        """Check ``data`` (the parsed JSON) and build the card; every error names ``path`` and the field."""
        return _CardReader(data, Path(path) if path is not None else None).card()

    # --- what the engine asks of a card -------------------------------------------------------------------------

    @property
    def main_stage(self) -> Stage:
        """The network ``cad segment`` runs on the image (a cascade's fine network), or the only classifier."""
        if self.cascade is not None:
            return Stage("fine", self.network, self.preprocessing, self.inference, FINE_PREFIX)
        foreign = (FAST_PREFIX,) if self.fast and "network" in self.fast else ()
        return Stage("main", self.network, self.preprocessing, self.inference, "", foreign)

    def fast_stage(self) -> Stage:
        """``--fast``: the main stage at the card's low spacing, or the card's own fast network."""
        if self.fast is None:
            raise CadError(f"model {self.id} names no fast resolution (model card 'fast' section); run without --fast",
                           self.path)
        preprocessing = {**self.preprocessing, "spacing": [float(v) for v in self.fast["spacing"]]}
        overrides = self.fast.get("inference", {})
        inference = _inference({**_inference_dict(self.inference), **overrides}, "fast.inference", self.path)
        if "network" in self.fast:
            return Stage("fast", self.fast["network"], preprocessing, inference, FAST_PREFIX)
        main = self.main_stage
        return Stage("fast", main.network, preprocessing, inference, main.weight_prefix, main.foreign_prefixes)

    def member_stages(self) -> list[Stage]:
        """A classifier's networks: one per ensemble member (tensors under ``<member>.``), else the one network."""
        if not self.ensemble_members:
            return [self.main_stage]
        return [Stage(member, self.network, self.preprocessing, self.inference, f"{member}.")
                for member in self.ensemble_members]

    @property
    def is_baseline(self) -> bool:
        """A classical baseline (hand-crafted features + scikit-learn), not a network."""
        return self.network.get("name") == "baseline"

    def label_names(self) -> dict[int, str]:
        return {label.value: label.name for label in self.labels}

    def label_dicts(self) -> list[dict[str, Any]]:
        return [label.as_dict() for label in self.labels]

    def class_names(self) -> list[str]:
        return [c.name for c in sorted(self.classes, key=lambda c: c.value)]

    @property
    def training(self) -> Mapping[str, Any]:
        """Provenance of the weights (data, split, settings, history), as the trainer wrote it."""
        value = self.raw.get("training")
        return value if isinstance(value, Mapping) else {}

    @property
    def metrics(self) -> Mapping[str, Any]:
        value = self.raw.get("metrics")
        return value if isinstance(value, Mapping) else {}

    @property
    def validation_ids(self) -> list[str]:
        """The cases (or samples) training held out, as the card lists them; empty when it lists none."""
        split = self.training.get("split")
        held_out = split.get("val") if isinstance(split, Mapping) else None
        return [str(v) for v in held_out] if isinstance(held_out, list) else []

    @property
    def trained_epochs(self) -> int | None:
        epochs = self.training.get("epochs")
        return int(epochs) if isinstance(epochs, (int, float)) else None

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the JSON as read, to derive a new card from (a new card is parsed again when saved)."""
        return copy.deepcopy(dict(self.raw))


@dataclass(frozen=True)
class ModelSummary:
    """What ``cad models list`` shows of a model package or a MONAI bundle."""

    id: str
    version: str | None
    task: str
    modality: str | None
    description: str
    labels: Mapping[str, str]  # label value (as text) -> name
    path: str
    format: str = "package"  # or "bundle"


# --- reading ----------------------------------------------------------------------------------------------------


def _inference_dict(inference: Inference) -> dict[str, Any]:
    values = {"overlap": inference.overlap, "mode": inference.mode, "sw_batch_size": inference.sw_batch_size}
    if inference.patch_size is not None:
        values["patch_size"] = list(inference.patch_size)
    return values


def _fail(path: Path | None, where: str, problem: str) -> CadError:
    return CadError(f"model card field {where!r} {problem}", path)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _triple(value: Any, where: str, path: Path | None, integer: bool = False) -> tuple:
    kind = int if integer else (int, float)
    if not (isinstance(value, list) and len(value) == 3 and all(
            isinstance(v, kind) and not isinstance(v, bool) and _number(v) and v > 0 for v in value)):
        raise _fail(path, where, f"must be three positive {'integers' if integer else 'numbers'}, got {value!r}")
    return tuple(int(v) if integer else float(v) for v in value)


def _inference(section: Any, where: str, path: Path | None) -> Inference:
    if not isinstance(section, Mapping):
        raise _fail(path, where, f"must be an object, got {section!r}")
    patch = section.get("patch_size")
    overlap = section.get("overlap", 0.5)
    if not _number(overlap) or not 0.0 <= overlap < 1.0:
        raise _fail(path, f"{where}.overlap", f"must be a number in [0, 1), got {overlap!r}")
    batch = section.get("sw_batch_size", 2)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise _fail(path, f"{where}.sw_batch_size", f"must be a positive integer, got {batch!r}")
    mode = section.get("mode", "gaussian")
    if mode not in BLEND_MODES:
        raise _fail(path, f"{where}.mode", f"must be one of {', '.join(BLEND_MODES)}, got {mode!r}")
    tta = section.get("tta")
    if tta not in (None, "flips"):
        raise _fail(path, f"{where}.tta", f"must be \"flips\" or absent, got {tta!r}")
    return Inference(None if patch is None else _triple(patch, f"{where}.patch_size", path, integer=True),
                     float(overlap), str(mode), int(batch), tta)


class _CardReader:
    """Checks one card's JSON field by field; :meth:`card` builds the :class:`ModelCard`."""

    def __init__(self, data: Any, path: Path | None) -> None:
        if not isinstance(data, Mapping):
            raise CadError("model card is not a JSON object", path)
        self.data, self.path = data, path

    def fail(self, where: str, problem: str) -> CadError:
        return _fail(self.path, where, problem)

    def section(self, data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, Mapping):
            raise self.fail(where, f"must be an object, got {value!r}")
        return copy.deepcopy(dict(value))

    def network(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, Mapping) or not isinstance(value.get("name"), str) or not value["name"]:
            raise self.fail(where, f"must be an object with a network 'name', got {value!r}")
        if not isinstance(value.get("params", {}), Mapping):
            raise self.fail(f"{where}.params", f"must be an object, got {value.get('params')!r}")
        return copy.deepcopy(dict(value))

    def preprocessing(self, data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
        values = self.section(data, key, where)
        spacing = values.get("spacing")
        if spacing is not None:
            _triple(spacing, f"{where}.spacing", self.path)
        interpolation = values.get("interpolation", "bspline")
        if interpolation not in INTERPOLATIONS:
            raise self.fail(f"{where}.interpolation", f"must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}")
        orientation = values.get("orientation")
        if orientation is not None and not (isinstance(orientation, str) and len(orientation) == 3):
            raise self.fail(f"{where}.orientation", f"must be three letters such as \"RAS\", got {orientation!r}")
        normalization = values.get("normalization", {})
        if not isinstance(normalization, Mapping) or normalization.get("kind", "none") not in NORMALIZATIONS:
            raise self.fail(f"{where}.normalization", f"must be an object whose kind is one of "
                                                      f"{', '.join(NORMALIZATIONS)}, got {normalization!r}")
        return values

    def labels(self) -> tuple[Label, ...]:
        entries = self.data.get("labels", [])
        if not isinstance(entries, list):
            raise self.fail("labels", f"must be a list of {{value, name, color}} objects, got {entries!r}")
        labels = []
        for index, entry in enumerate(entries):
            where = f"labels[{index}]"
            if not isinstance(entry, Mapping):
                raise self.fail(where, f"must be an object, got {entry!r}")
            value, name, color = entry.get("value"), entry.get("name"), entry.get("color")
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
                raise self.fail(f"{where}.value", f"must be an integer in 0..255, got {value!r}")
            if not isinstance(name, str) or not name:
                raise self.fail(f"{where}.name", f"must be a non-empty text, got {name!r}")
            if color is not None and not (isinstance(color, list) and len(color) == 3 and all(
                    _number(c) and 0 <= c <= 1 for c in color)):
                raise self.fail(f"{where}.color", f"must be three numbers in 0..1, got {color!r}")
            terminology = entry.get("terminology")
            if terminology is not None and not isinstance(terminology, Mapping):
                raise self.fail(f"{where}.terminology", f"must be an object, got {terminology!r}")
            labels.append(Label(value, name, tuple(float(c) for c in color) if color is not None else None,
                                copy.deepcopy(dict(terminology)) if terminology is not None else None))
        values = [label.value for label in labels]
        if len(set(values)) != len(values):
            raise self.fail("labels", f"has repeated values {values}")
        return tuple(labels)

    def classes(self) -> tuple[ClassLabel, ...]:
        entries = self.data.get("classes", [])
        if not isinstance(entries, list) or not all(
                isinstance(e, Mapping) and isinstance(e.get("value"), int) and isinstance(e.get("name"), str)
                for e in entries):
            raise self.fail("classes", f"must be a list of {{value, name}} objects, got {entries!r}")
        classes = tuple(ClassLabel(int(e["value"]), str(e["name"])) for e in entries)
        if sorted(c.value for c in classes) != list(range(len(classes))):
            raise self.fail("classes", f"values must be the output indices 0..{len(classes) - 1}")
        return classes

    def cascade(self) -> Cascade | None:
        section = self.data.get("cascade")
        if section is None:
            return None
        if not isinstance(section, Mapping) or not isinstance(section.get("coarse"), Mapping):
            raise self.fail("cascade", "must be an object with a 'coarse' stage")
        coarse = section["coarse"]
        inference = _inference({"overlap": 0.25, **coarse.get("inference", {})}, "cascade.coarse.inference", self.path)
        if inference.patch_size is None:
            raise self.fail("cascade.coarse.inference.patch_size", "is missing")
        stage = Stage("coarse", self.network(coarse.get("network"), "cascade.coarse.network"),
                      self.preprocessing(coarse, "preprocessing", "cascade.coarse.preprocessing"), inference,
                      COARSE_PREFIX)
        margin, fraction = section.get("margin_mm", 10.0), section.get("min_component_fraction", 0.1)
        if not _number(margin) or margin < 0:
            raise self.fail("cascade.margin_mm", f"must be a number >= 0, got {margin!r}")
        if not _number(fraction) or not 0 <= fraction <= 1:
            raise self.fail("cascade.min_component_fraction", f"must be a number in 0..1, got {fraction!r}")
        return Cascade(stage, float(margin), float(fraction))

    def fast(self) -> dict[str, Any] | None:
        section = self.data.get("fast")
        if section is None:
            return None
        if not isinstance(section, Mapping) or not section.get("spacing"):
            raise self.fail("fast", f"must be an object with a 'spacing', got {section!r}")
        _triple(section["spacing"], "fast.spacing", self.path)
        if "network" in section:
            self.network(section["network"], "fast.network")
        if not isinstance(section.get("inference", {}), Mapping):
            raise self.fail("fast.inference", "must be an object")
        return copy.deepcopy(dict(section))

    def card(self) -> ModelCard:
        data = self.data
        missing = [name for name in ("id", "task", "network", "version") if name not in data]
        if missing:
            raise CadError(f"model card lacks required fields: {', '.join(missing)}", self.path)
        if data["task"] not in TASKS:
            raise CadError(f"unknown task {data['task']!r} (expected one of {', '.join(TASKS)})", self.path)
        if not isinstance(data["id"], str) or not data["id"]:
            raise self.fail("id", f"must be a non-empty text, got {data['id']!r}")
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise self.fail("format_version", f"is {data.get('format_version')!r}; this engine reads version "
                                              f"{FORMAT_VERSION}")
        task = str(data["task"])
        network = self.network(data["network"], "network")
        inference = _inference(data.get("inference", {}), "inference", self.path)
        if task == "segmentation" and inference.patch_size is None:
            raise self.fail("inference.patch_size", "is missing (a segmentation model needs its window size)")
        weights = self.section(data, "weights", "weights")
        calibration = self.section(data, "calibration", "calibration")
        temperature, prior = calibration.get("temperature", 1.0), calibration.get("prior")
        if not _number(temperature) or temperature <= 0:
            raise self.fail("calibration.temperature", f"must be a positive number, got {temperature!r}")
        if prior is not None and not (isinstance(prior, list) and all(_number(p) and p >= 0 for p in prior)):
            raise self.fail("calibration.prior", f"must be a list of class frequencies, got {prior!r}")
        members = self.section(data, "ensemble", "ensemble").get("members") or []
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            raise self.fail("ensemble.members", f"must be a list of weight prefixes, got {members!r}")
        layer = self.section(data, "gradcam", "gradcam").get("target_layer", "layer4")
        text = {key: data.get(key) for key in ("name", "description", "modality")}
        for key, value in text.items():
            if value is not None and not isinstance(value, str):
                raise self.fail(key, f"must be text, got {value!r}")
        return ModelCard(
            id=data["id"], version=str(data["version"]), task=task, network=network,
            format_version=int(data.get("format_version", FORMAT_VERSION)), name=text["name"],
            description=text["description"] or "", modality=text["modality"], labels=self.labels(),
            classes=self.classes(), preprocessing=self.preprocessing(data, "preprocessing", "preprocessing"),
            inference=inference, postprocessing=self.section(data, "postprocessing", "postprocessing"),
            cascade=self.cascade(), fast=self.fast(), ensemble_members=tuple(members),
            roi=self.section(data, "roi", "roi"),
            calibration=Calibration(float(temperature), tuple(float(p) for p in prior) if prior else None),
            gradcam_layer=str(layer),
            weights=WeightsFile(str(weights.get("file", "model.safetensors")), weights.get("sha256"),
                                weights.get("format")),
            raw=copy.deepcopy(dict(data)), path=self.path)
