"""Every default of ``cad train``, in one place: the typed settings of each kind of training.

The command line's parser leaves these flags unset unless the user gives them, so a default is written once, here;
library callers (benchmarks, the Slicer module's in-process runner) get the same defaults from the dataclasses.
Each dataclass also refuses impossible values when it is built (``__post_init__``), naming the ``cad train`` flag:
``cad train`` builds its config before reading any data or writing anything, so ``--patch-size 0,0,0`` or
``--epochs -3`` fail in one line instead of after the data was loaded (or, for ``--epochs -3``, with an exported
untrained model). This module stays free of torch (the parser imports it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

from cadcore.errors import CadError

MIN_UNET_LEVELS = 3  # DynUNet needs an input block, one downsampling level and a bottleneck
# --modality: CT gets a fixed Hounsfield window; MR and ANY (a network trained on CT and MR together, such as the
# generic promptable model) get the per-image percentile clip and z-score, the one normalisation that needs no units
# (see cadcore.registry.card.ANY_MODALITY). The card records the value in capitals.
MODALITIES = ("MR", "CT", "ANY")


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def at_least(flag: str, value: Any, low: int) -> None:
    """An integer setting (epochs, batch size, ...) must be an integer >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise CadError(f"{flag} must be an integer >= {low}, got {value!r}")


def non_negative(flag: str, value: Any, positive: bool = False) -> None:
    """A finite real >= 0 (> 0 with ``positive``)."""
    if not _is_number(value) or value < 0 or (positive and value == 0):
        raise CadError(f"{flag} must be a finite number {'>' if positive else '>='} 0, got {value!r}")


def fraction(flag: str, value: Any) -> None:
    """Strictly between 0 and 1: a validation share of 0 or 1 leaves one side of the split empty."""
    if not _is_number(value) or not 0 < value < 1:
        raise CadError(f"{flag} must be between 0 and 1 (exclusive), got {value!r}")


def positive_ints(flag: str, values: Any, count: int | None = 3, minimum_count: int = 1, what: str = "") -> None:
    """A list of positive integers: exactly ``count`` of them, or at least ``minimum_count`` when ``count`` is None."""
    ok = isinstance(values, Sequence) and not isinstance(values, str) and all(
        isinstance(v, Integral) and not isinstance(v, bool) and v >= 1 for v in values)
    ok = ok and (len(values) == count if count is not None else len(values) >= minimum_count)
    if not ok:
        amount = f"{count}" if count is not None else f"at least {minimum_count}"
        raise CadError(f"{flag} needs {amount} positive integers{what}, got {_shown(values)}")


def positive_reals(flag: str, values: Any, count: int = 3, unit: str = " in mm") -> None:
    ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) == count and all(
        _is_number(v) and v > 0 for v in values)
    if not ok:
        raise CadError(f"{flag} needs {count} positive values{unit}, got {_shown(values)}")


def _shown(values: Any) -> str:
    return ",".join(map(str, values)) if isinstance(values, (list, tuple)) else repr(values)


@dataclass
class TrainConfig:
    data: str
    output: str
    model_id: str = ""
    epochs: int = 100
    seed: int = 0
    val_fraction: float = 0.2
    val_every: int = 5
    batch_size: int = 2
    patch_size: list[int] = field(default_factory=lambda: [40, 56, 40])
    filters: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    learning_rate: float = 2e-3
    weight_decay: float = 3e-5
    warmup_epochs: int = 2
    spacing: list[float] | None = None
    orientation: str = "RAS"
    modality: str = "MR"
    ct_window: list[float] = field(default_factory=lambda: [-1000.0, 1000.0])
    mirror_axes: list[int] = field(default_factory=lambda: [0])
    augmentation_strength: float = 1.0  # scales rotation and scaling ranges (a self-training student may use more)
    device: str = "auto"
    resume: bool = False
    force: bool = False
    max_cases: int | None = None
    description: str = ""
    progress_prefix: str = ""  # before each progress bar's name: a cascade's "coarse stage, " / "fine stage, "
    version: str = "1.0.0"
    init: str | None = None  # transfer learning: a model package (id or folder) to start from
    init_stage: str | None = None  # with a cascade --init: the stage ("coarse" or "fine") this training starts from
    freeze_encoder_epochs: int = 0
    pretrained_lr_factor: float = 0.1
    labels: str | None = None  # JSON file: [{"value", "name", "color", "terminology"?}] for the model card
    allow_overlap: bool = False  # with init: accept validation cases the parent may have trained on
    interactive: bool = False  # a guided network: image + click maps in, "the prompted structure" out
    prompt_corrections: int = 2  # interactive: at most this many simulated corrective clicks per step

    def __post_init__(self) -> None:
        if not isinstance(self.prompt_corrections, int) or isinstance(self.prompt_corrections, bool) \
                or not 0 <= self.prompt_corrections <= 20:
            raise CadError(f"--prompt-corrections must be a whole number from 0 to 20, got {self.prompt_corrections!r}")
        at_least("--epochs", self.epochs, 1)
        at_least("--batch-size", self.batch_size, 1)
        at_least("--val-every", self.val_every, 1)
        fraction("--val-fraction", self.val_fraction)
        positive_ints("--patch-size", self.patch_size, what=" (I,J,K voxels)")
        positive_ints("--filters", self.filters, count=None, minimum_count=MIN_UNET_LEVELS,
                      what=" (DynUNet's minimum: one channel count per level)")
        non_negative("--lr", self.learning_rate)  # 0 is allowed: a frozen run (tests use it to follow weights)
        non_negative("--weight-decay", self.weight_decay)
        at_least("--warmup-epochs", self.warmup_epochs, 0)
        if self.spacing is not None:
            positive_reals("--spacing", self.spacing)
        if not isinstance(self.modality, str) or self.modality.upper() not in MODALITIES:
            raise CadError(f"--modality must be MR, CT or any (mixed CT and MR), got {self.modality!r}")
        if (not isinstance(self.ct_window, Sequence) or len(self.ct_window) != 2
                or not all(_is_number(v) for v in self.ct_window) or self.ct_window[0] >= self.ct_window[1]):
            raise CadError(f"--ct-window needs two numbers LOW,HIGH with LOW < HIGH, got {_shown(self.ct_window)}")
        if (not isinstance(self.mirror_axes, Sequence) or isinstance(self.mirror_axes, str)
                or any(isinstance(a, bool) or a not in (0, 1, 2) for a in self.mirror_axes)):
            raise CadError(f"--mirror-axes takes axes 0, 1 and 2 (I, J, K), got {_shown(self.mirror_axes)}")
        non_negative("--augmentation-strength", self.augmentation_strength)
        if self.max_cases is not None:
            at_least("--max-cases", self.max_cases, 1)
        at_least("--freeze-encoder-epochs", self.freeze_encoder_epochs, 0)
        non_negative("--pretrained-lr-factor", self.pretrained_lr_factor)


@dataclass
class ClassifyConfig:
    data: str
    output: str
    model_id: str = ""
    network: str = "resnet18"
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    epochs: int = 60
    patience: int = 15
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.2
    roi_size: list[int] = field(default_factory=lambda: [28, 28, 28])
    roi_spacing: list[float] | None = None
    roi_input: str = "image"
    class_names: list[str] = field(default_factory=list)
    baseline: str | None = None
    tta: bool = False
    device: str = "auto"
    force: bool = False
    description: str = ""
    version: str = "1.0.0"

    def __post_init__(self) -> None:
        at_least("--epochs", self.epochs, 1)
        at_least("--patience", self.patience, 1)
        at_least("--batch-size", self.batch_size, 1)
        fraction("--val-fraction", self.val_fraction)
        non_negative("--lr", self.learning_rate)
        non_negative("--weight-decay", self.weight_decay)
        positive_ints("--roi-size", self.roi_size, what=" (I,J,K voxels)")
        if self.roi_spacing is not None:
            positive_reals("--roi-spacing", self.roi_spacing)
        if self.network == "resnet18":  # ResNet-18's four stages: one channel count each
            positive_ints("--widths", self.widths, count=4, what=" (one per ResNet stage)")
        if self.roi_input not in ("image", "mask", "masked_image"):
            raise CadError(f"--roi-input must be image, mask or masked_image, got {self.roi_input!r}")


@dataclass
class CascadeOptions:
    """What ``--cascade`` adds to a :class:`TrainConfig` (which describes the fine stage)."""

    coarse_spacing: list[float] | None = None  # default: 4x the finest fine-stage axis, never finer than the data
    coarse_patch_size: list[int] | None = None  # default: the median volume extent at the coarse spacing
    coarse_filters: list[int] | None = None  # default: the fine stage's (a thinner net learnt too slowly, see below)
    coarse_epochs: int | None = None  # default: the fine stage's epochs
    roi_margin: float = 10.0  # mm added to each side of the target's box
    roi_jitter: float = 0.5  # training crops draw each side's margin from margin * U(1 - jitter, 1 + jitter)

    def __post_init__(self) -> None:
        if self.coarse_spacing is not None:
            positive_reals("--coarse-spacing", self.coarse_spacing)
        if self.coarse_patch_size is not None:
            positive_ints("--coarse-patch-size", self.coarse_patch_size, what=" (I,J,K voxels)")
        if self.coarse_filters is not None:
            positive_ints("--coarse-filters", self.coarse_filters, count=None, minimum_count=MIN_UNET_LEVELS,
                          what=" (DynUNet's minimum: one channel count per level)")
        if self.coarse_epochs is not None:
            at_least("--coarse-epochs", self.coarse_epochs, 1)
        non_negative("--roi-margin", self.roi_margin)
        if not _is_number(self.roi_jitter) or not 0 <= self.roi_jitter < 1:
            raise CadError(f"--roi-jitter must be in [0, 1), got {self.roi_jitter!r}")

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> CascadeOptions:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in fields and v is not None})


@dataclass
class SelfTrainOptions:
    unlabelled: str  # a folder of volumes, or a text file with one volume path per line
    rounds: int = 1
    confidence: float = 0.9  # voxels whose top class probability is lower are ignored by the student's loss
    tta: bool = True  # average the teacher over flips along the training's mirror axes
    student_epochs: int | None = None  # default: the teacher's --epochs
    student_init: str = "scratch"  # or "teacher": each student starts from the previous round's weights
    student_augmentation: float = 1.0  # the student's rotation/scaling ranges, relative to the teacher's

    def __post_init__(self) -> None:
        at_least("--rounds", self.rounds, 1)
        if not _is_number(self.confidence) or not 0 <= self.confidence <= 1:
            raise CadError(f"--confidence must be in [0, 1], got {self.confidence!r}")
        if self.student_epochs is not None:
            at_least("--student-epochs", self.student_epochs, 1)
        if self.student_init not in ("scratch", "teacher"):
            raise CadError(f"--student-init must be scratch or teacher, got {self.student_init!r}")
        if not _is_number(self.student_augmentation) or not 0 <= self.student_augmentation <= 3:
            raise CadError(f"--student-augmentation must be in [0, 3], got {self.student_augmentation!r}")

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> SelfTrainOptions:
        """From the parsed ``cad train`` arguments (``None`` means "the default")."""
        given = {"unlabelled": values["unlabelled"], "rounds": values.get("rounds"),
                 "confidence": values.get("confidence"), "tta": values.get("pseudo_tta", True),
                 "student_epochs": values.get("student_epochs"), "student_init": values.get("student_init"),
                 "student_augmentation": values.get("student_augmentation")}
        return cls(**{k: v for k, v in given.items() if v is not None})
