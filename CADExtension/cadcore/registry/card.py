"""The model card (``model.json``) as a typed, read-only object, validated once when it is read.

A card used to be a raw dict read in about a hundred places, each with its own default and its own failure (a
``KeyError`` traceback, or a wrong default silently used). Now :func:`cadcore.registry.card_reader.parse_card` checks
every field the engine uses, naming ``model.json`` and the field in the one-line error, and the rest of the engine reads
typed attributes.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cadcore.errors import CadError

FORMAT_VERSION = 1
TASKS = ("segmentation", "classification")
INTERPOLATIONS = ("bspline", "linear")
NORMALIZATIONS = ("ct", "mr", "none")
# A card's ``modality`` is free text ("MR", "CT", ...) except this value: the network was trained on CT and MR
# together (``cad train --modality any``) and takes either. Its images are normalised per image (percentile clip and
# z-score, the ``mr`` kind): Hounsfield units mean nothing for MR, and a z-score after clipping the 0.5/99.5
# percentiles maps a CT (air, soft tissue, bone) and an MR alike to a few units around 0, so one network can read
# both and learns contrast, not absolute values. A fixed CT window would turn every MR into noise, so a card that
# says ANY with ``ct`` normalisation is refused when read.
ANY_MODALITY = "ANY"
BLEND_MODES = ("gaussian", "constant")
PROMPT_CHANNELS = ("image", "positive", "negative", "previous")  # what a guided network's input channels can hold
PROMPT_KINDS = ("gaussian", "disk")
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
class FastMode:
    """``--fast``: a lower working resolution, optionally with its own network (tensors under ``fast.``)."""

    spacing: tuple[float, float, float]
    inference: Inference  # the main inference settings with the fast section's own overrides
    network: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Interactive:
    """A guided network (DeepEdit-style): its input channels are the image and prompt maps drawn on the working grid,
    ``gaussian`` (sigma = ``radius_mm``) or ``disk`` (radius ``radius_mm``) around each click, and optionally the
    previous segment."""

    channels: tuple[str, ...] = ("image", "positive", "negative")
    kind: str = "gaussian"
    radius_mm: float = 3.0


@dataclass(frozen=True)
class Pipeline:
    """A model that is not run by the standard pipeline (resample, normalise, sliding window, back to the grid):
    ``name`` picks the engine's pipeline module (``cadcore.registry.pipelines.PIPELINES``), ``options`` are its own
    typed options (a frozen dataclass read by that pipeline's card module), and ``stages`` its extra networks, each
    stored under the weight prefix ``"<stage role>."`` beside the card's main ``network``."""

    name: str
    options: Any = None
    stages: tuple[Stage, ...] = ()


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
class AxisRange:
    """Per-axis bounds (I, J, K of the card's working orientation; in mm)."""

    min: tuple[float, float, float]
    max: tuple[float, float, float]


@dataclass(frozen=True)
class IntensityStats:
    """Voxel intensities after the card's normalisation, pooled over the training images."""

    mean: float
    std: float
    p01: float
    p99: float


@dataclass(frozen=True)
class TrainingDomain:
    """What the network was trained on (``training_domain``), so ``cad segment`` can say when an input lies far
    outside it (:mod:`cadcore.segmentation.ood_guard`). Every part is optional: a guard checks what is recorded."""

    modality: str | None = None
    field_of_view_mm: AxisRange | None = None
    spacing_mm: AxisRange | None = None
    intensity: IntensityStats | None = None
    cases: int | None = None
    source: str = ""


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
    fast: FastMode | None = None
    ensemble_members: tuple[str, ...] = ()
    roi: Mapping[str, Any] = field(default_factory=dict)
    calibration: Calibration = Calibration()
    gradcam_layer: str = "layer4"
    interactive: Interactive | None = None  # a guided network's prompt channels
    pipeline: Pipeline | None = None  # None: the standard pipeline
    weights: WeightsFile = WeightsFile()
    training_domain: TrainingDomain | None = None  # None: no out-of-distribution guard
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the JSON as read: provenance and all
    path: Path | None = field(default=None, compare=False)  # where it was read from, for error messages

    # --- what the engine asks of a card -------------------------------------------------------------------------

    @property
    def main_stage(self) -> Stage:
        """The network ``cad segment`` runs on the image (a cascade's fine network), or the only classifier."""
        if self.cascade is not None:
            return Stage("fine", self.network, self.preprocessing, self.inference, FINE_PREFIX)
        foreign = (FAST_PREFIX,) if self.fast and self.fast.network is not None else ()
        if self.pipeline is not None:
            foreign += tuple(stage.weight_prefix for stage in self.pipeline.stages)
        return Stage("main", self.network, self.preprocessing, self.inference, "", foreign)

    def fast_stage(self) -> Stage:
        """``--fast``: the main stage at the card's low spacing, or the card's own fast network."""
        if self.fast is None:
            raise CadError(f"model {self.id} names no fast resolution (model card 'fast' section); run without --fast",
                           self.path)
        preprocessing = {**self.preprocessing, "spacing": list(self.fast.spacing)}
        if self.fast.network is not None:
            return Stage("fast", self.fast.network, preprocessing, self.fast.inference, FAST_PREFIX)
        main = self.main_stage
        return Stage("fast", main.network, preprocessing, self.fast.inference, main.weight_prefix,
                     main.foreign_prefixes)

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
    def mirror_axes(self) -> tuple[int, ...]:
        """The axes training mirrored (``training.config.mirror_axes``, a cascade's fine stage's), so test-time
        augmentation shows the network only views it has learnt; left-right (0, the trainer's default) when the
        card does not say."""
        stages = self.training.get("stages")
        fine = stages.get("fine") if isinstance(stages, Mapping) else None
        for section in (self.training, fine if isinstance(fine, Mapping) else {}):
            config = section.get("config")
            axes = config.get("mirror_axes") if isinstance(config, Mapping) else None
            if isinstance(axes, list) and all(a in (0, 1, 2) and not isinstance(a, bool) for a in axes):
                return tuple(sorted(set(int(a) for a in axes)))
        return (0,)

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
    guided: bool = False  # a guided (interactive) network: it needs clicks (cad interact), cad segment refuses it
