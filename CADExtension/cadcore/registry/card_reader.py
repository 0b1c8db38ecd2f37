"""Reading ``model.json``: every field the engine uses is checked here, once, before a :class:`ModelCard` exists.

Errors are one line naming the card's file and the field (``model card field 'inference.overlap' must be a number in
[0, 1), got 1.5``), so a researcher editing a card by hand, or a broken download, is told exactly what to fix. The
checks follow what the engine does with each value (a spacing must be three positive numbers because it divides, a
label value must fit a uint8 labelmap, a blend mode must be one MONAI's sliding window knows).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cadcore.errors import CadError
from cadcore.registry.card import (
    ANY_MODALITY,
    BLEND_MODES,
    COARSE_PREFIX,
    FORMAT_VERSION,
    INTERPOLATIONS,
    NORMALIZATIONS,
    PROMPT_CHANNELS,
    PROMPT_KINDS,
    TASKS,
    AxisRange,
    Calibration,
    Cascade,
    ClassLabel,
    FastMode,
    Inference,
    IntensityStats,
    Interactive,
    Label,
    ModelCard,
    Pipeline,
    Stage,
    TrainingDomain,
    WeightsFile,
)

MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MODEL_ID_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"
MAX_ID_LENGTH = 128
SHA256 = re.compile(r"[0-9a-f]{64}")


def trained_model_id(model_id: str | None, output: str | Path) -> str:
    """The id a training run will write (``--id``, else the output folder's name), refused before training when it
    is not a plain name: a folder called "my model" must not fail only after hours of training."""
    chosen = model_id or Path(output).name
    if not is_model_id(chosen):
        raise CadError(f"model id {chosen!r} is not a plain name (letters, digits, '.', '_', '-'); pass --id NAME",
                       output)
    return chosen


def is_model_id(value: Any) -> bool:
    """A model id is one plain name, because it becomes a folder name in the registry: an absolute path, ``..``
    or a slash in it used to install (and with ``--force``, delete) outside the registry. Trainers can check the
    id they will write with this before training starts."""
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH and MODEL_ID.fullmatch(value) is not None


def parse_card(data: Any, path: str | Path | None = None) -> ModelCard:
    """Check ``data`` (a parsed ``model.json``) and build the card; every error names ``path`` and the field."""
    return _CardReader(data, Path(path) if path is not None else None).card()


def _inference_dict(inference: Inference) -> dict[str, Any]:
    values = {"overlap": inference.overlap, "mode": inference.mode, "sw_batch_size": inference.sw_batch_size}
    if inference.patch_size is not None:
        values["patch_size"] = list(inference.patch_size)
    return values


def _fail(path: Path | None, where: str, problem: str) -> CadError:
    return CadError(f"model card field {where!r} {problem}", path)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what every numeric card field must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _triple(value: Any, where: str, path: Path | None, integer: bool = False) -> tuple:
    kind = int if integer else (int, float)
    if not (isinstance(value, list) and len(value) == 3 and all(
            isinstance(v, kind) and not isinstance(v, bool) and is_number(v) and v > 0 for v in value)):
        raise _fail(path, where, f"must be three positive {'integers' if integer else 'numbers'}, got {value!r}")
    return tuple(int(v) if integer else float(v) for v in value)


def _inference(section: Any, where: str, path: Path | None) -> Inference:
    if not isinstance(section, Mapping):
        raise _fail(path, where, f"must be an object, got {section!r}")
    patch = section.get("patch_size")
    overlap = section.get("overlap", 0.5)
    if not is_number(overlap) or not 0.0 <= overlap < 1.0:
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
                    is_number(c) and 0 <= c <= 1 for c in color)):
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
        if not is_number(margin) or margin < 0:
            raise self.fail("cascade.margin_mm", f"must be a number >= 0, got {margin!r}")
        if not is_number(fraction) or not 0 <= fraction <= 1:
            raise self.fail("cascade.min_component_fraction", f"must be a number in 0..1, got {fraction!r}")
        return Cascade(stage, float(margin), float(fraction))

    def interactive(self, network: Mapping[str, Any]) -> Interactive | None:
        section = self.data.get("interactive")
        if section is None:
            return None
        if not isinstance(section, Mapping):
            raise self.fail("interactive", f"must be an object, got {section!r}")
        channels = section.get("channels", ["image", "positive", "negative"])
        if (not isinstance(channels, list) or not channels or channels[0] != "image"
                or len(set(channels)) != len(channels) or not all(c in PROMPT_CHANNELS for c in channels)):
            raise self.fail("interactive.channels", f"must start with \"image\" and name each of "
                                                    f"{', '.join(PROMPT_CHANNELS[1:])} at most once, got {channels!r}")
        kind, radius = section.get("kind", "gaussian"), section.get("radius_mm", 3.0)
        if kind not in PROMPT_KINDS:
            raise self.fail("interactive.kind", f"must be one of {', '.join(PROMPT_KINDS)}, got {kind!r}")
        if not is_number(radius) or radius <= 0:
            raise self.fail("interactive.radius_mm", f"must be a positive number, got {radius!r}")
        declared = network.get("params", {}).get("in_channels")
        if declared is not None and declared != len(channels):
            raise self.fail("interactive.channels", f"has {len(channels)} channels but the network takes {declared}")
        return Interactive(tuple(channels), str(kind), float(radius))

    def pipeline(self) -> Pipeline | None:
        """``pipeline``: the model's own pipeline (:mod:`cadcore.registry.pipelines`), its extra networks and its
        options; None for the standard pipeline."""
        from cadcore.registry.pipelines import read_options

        section = self.data.get("pipeline")
        if section is None:
            return None
        if not isinstance(section, Mapping) or not isinstance(section.get("name"), str):
            raise self.fail("pipeline", f"must be an object with a pipeline 'name', got {section!r}")
        networks = section.get("networks", {})
        if not isinstance(networks, Mapping) or not all(is_model_id(role) for role in networks):
            raise self.fail("pipeline.networks", f"must map plain role names to networks, got {networks!r}")
        stages = tuple(Stage(str(role), self.network(spec, f"pipeline.networks.{role}"), {}, Inference(),
                             f"{role}.") for role, spec in networks.items())
        options = {key: value for key, value in section.items() if key not in ("name", "networks")}
        return Pipeline(section["name"], read_options(section["name"], options,
                                                      lambda where, problem: self.fail(f"pipeline.{where}", problem)),
                        stages)

    def fast(self, main: Inference) -> FastMode | None:
        section = self.data.get("fast")
        if section is None:
            return None
        if not isinstance(section, Mapping) or not section.get("spacing"):
            raise self.fail("fast", f"must be an object with a 'spacing', got {section!r}")
        spacing = _triple(section["spacing"], "fast.spacing", self.path)
        network = self.network(section["network"], "fast.network") if "network" in section else None
        overrides = section.get("inference", {})
        if not isinstance(overrides, Mapping):
            raise self.fail("fast.inference", "must be an object")
        inference = _inference({**_inference_dict(main), **overrides}, "fast.inference", self.path)
        return FastMode(spacing, inference, network)

    def training_domain(self) -> TrainingDomain | None:
        """``training_domain`` (optional): ranges of positive per-axis mm with min <= max, four finite intensity
        statistics (std > 0, p01 <= p99), a case count and free-text modality and source."""
        section = self.data.get("training_domain")
        if section is None:
            return None
        if not isinstance(section, Mapping):
            raise self.fail("training_domain", f"must be an object, got {section!r}")
        ranges = {}
        for key in ("field_of_view_mm", "spacing_mm"):
            where, value = f"training_domain.{key}", section.get(key)
            if value is None:
                ranges[key] = None
                continue
            if not isinstance(value, Mapping):
                raise self.fail(where, f"must be an object with 'min' and 'max', got {value!r}")
            low, high = (_triple(value.get(end), f"{where}.{end}", self.path) for end in ("min", "max"))
            if min(low) <= 0 or any(a > b for a, b in zip(low, high)):
                raise self.fail(where, f"must have 0 < min <= max on every axis, got {dict(value)!r}")
            ranges[key] = AxisRange(tuple(float(v) for v in low), tuple(float(v) for v in high))
        intensity = section.get("intensity")
        if intensity is not None:
            names = ("mean", "std", "p01", "p99")
            if not (isinstance(intensity, Mapping) and all(is_number(intensity.get(n)) for n in names)
                    and intensity["std"] > 0 and intensity["p01"] <= intensity["p99"]):
                raise self.fail("training_domain.intensity", f"must hold numbers mean, std > 0, p01 <= p99, got "
                                                             f"{intensity!r}")
            intensity = IntensityStats(*(float(intensity[n]) for n in names))
        cases, modality, source = section.get("cases"), section.get("modality"), section.get("source", "")
        if cases is not None and (not isinstance(cases, int) or isinstance(cases, bool) or cases < 1):
            raise self.fail("training_domain.cases", f"must be a positive integer, got {cases!r}")
        for key, value in (("modality", modality), ("source", source)):
            if value is not None and not isinstance(value, str):
                raise self.fail(f"training_domain.{key}", f"must be text, got {value!r}")
        return TrainingDomain(modality, ranges["field_of_view_mm"], ranges["spacing_mm"], intensity, cases,
                              source or "")

    def weights_file(self, weights: Mapping[str, Any]) -> WeightsFile:
        """The weights file is a plain name inside the package (``../x`` or an absolute path would verify and load a
        file from anywhere), in safetensors format, pinned by a sha256 when one is given."""
        name, digest, kind = weights.get("file", "model.safetensors"), weights.get("sha256"), weights.get("format")
        if not is_model_id(name):
            raise self.fail("weights.file", f"must be a plain file name in the package folder, got {name!r}")
        if digest is not None and not (isinstance(digest, str) and SHA256.fullmatch(digest)):
            raise self.fail("weights.sha256", f"must be 64 lowercase hex digits, got {digest!r}")
        if kind not in (None, "safetensors"):
            raise self.fail("weights.format", f"must be \"safetensors\" (the only format loaded), got {kind!r}")
        return WeightsFile(name, digest, kind)

    def card(self) -> ModelCard:
        data = self.data
        missing = [name for name in ("id", "task", "network", "version") if name not in data]
        if missing:
            raise CadError(f"model card lacks required fields: {', '.join(missing)}", self.path)
        if data["task"] not in TASKS:
            raise CadError(f"unknown task {data['task']!r} (expected one of {', '.join(TASKS)})", self.path)
        if not is_model_id(data["id"]):
            raise self.fail("id", f"must be one plain name ({MODEL_ID_RULE}, at most {MAX_ID_LENGTH} characters: it "
                                  f"names the model's folder), got {data['id']!r}")
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise self.fail("format_version", f"is {data.get('format_version')!r}; this engine reads version "
                                              f"{FORMAT_VERSION}")
        task = str(data["task"])
        network = self.network(data["network"], "network")
        inference = _inference(data.get("inference", {}), "inference", self.path)
        if task == "segmentation" and inference.patch_size is None and "pipeline" not in data:
            raise self.fail("inference.patch_size", "is missing (a segmentation model needs its window size)")
        weights = self.section(data, "weights", "weights")
        calibration = self.section(data, "calibration", "calibration")
        temperature, prior = calibration.get("temperature", 1.0), calibration.get("prior")
        if not is_number(temperature) or temperature <= 0:
            raise self.fail("calibration.temperature", f"must be a positive number, got {temperature!r}")
        if prior is not None and not (isinstance(prior, list) and all(is_number(p) and p >= 0 for p in prior)):
            raise self.fail("calibration.prior", f"must be a list of class frequencies, got {prior!r}")
        members = self.section(data, "ensemble", "ensemble").get("members") or []
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            raise self.fail("ensemble.members", f"must be a list of weight prefixes, got {members!r}")
        layer = self.section(data, "gradcam", "gradcam").get("target_layer", "layer4")
        text = {key: data.get(key) for key in ("name", "description", "modality")}
        for key, value in text.items():
            if value is not None and not isinstance(value, str):
                raise self.fail(key, f"must be text, got {value!r}")
        preprocessing = self.preprocessing(data, "preprocessing", "preprocessing")
        if (text["modality"] or "").upper() == ANY_MODALITY and \
                preprocessing.get("normalization", {}).get("kind") == "ct":  # see ANY_MODALITY
            raise self.fail("preprocessing.normalization", "is a CT window, but modality ANY means CT and MR: "
                                                           "use the per-image 'mr' kind")
        return ModelCard(
            id=data["id"], version=str(data["version"]), task=task, network=network,
            format_version=int(data.get("format_version", FORMAT_VERSION)), name=text["name"],
            description=text["description"] or "", modality=text["modality"], labels=self.labels(),
            classes=self.classes(), preprocessing=preprocessing,
            inference=inference, postprocessing=self.section(data, "postprocessing", "postprocessing"),
            cascade=self.cascade(), fast=self.fast(inference), ensemble_members=tuple(members),
            roi=self.section(data, "roi", "roi"),
            calibration=Calibration(float(temperature), tuple(float(p) for p in prior) if prior else None),
            gradcam_layer=str(layer), interactive=self.interactive(network), pipeline=self.pipeline(),
            weights=self.weights_file(weights), training_domain=self.training_domain(),
            raw=copy.deepcopy(dict(data)), path=self.path)
