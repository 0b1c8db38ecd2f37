"""Every default of ``cad train``, in one place: the typed settings of each kind of training.

The command line's parser leaves these flags unset unless the user gives them, so a default is written once, here;
library callers (benchmarks, the Slicer module's in-process runner) get the same defaults from the dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


@dataclass
class CascadeOptions:
    """What ``--cascade`` adds to a :class:`TrainConfig` (which describes the fine stage)."""

    coarse_spacing: list[float] | None = None  # default: 4x the finest fine-stage axis, never finer than the data
    coarse_patch_size: list[int] | None = None  # default: the median volume extent at the coarse spacing
    coarse_filters: list[int] | None = None  # default: the fine stage's (a thinner net learnt too slowly, see below)
    coarse_epochs: int | None = None  # default: the fine stage's epochs
    roi_margin: float = 10.0  # mm added to each side of the target's box
    roi_jitter: float = 0.5  # training crops draw each side's margin from margin * U(1 - jitter, 1 + jitter)

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

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> SelfTrainOptions:
        """From the parsed ``cad train`` arguments (``None`` means "the default")."""
        given = {"unlabelled": values["unlabelled"], "rounds": values.get("rounds"),
                 "confidence": values.get("confidence"), "tta": values.get("pseudo_tta", True),
                 "student_epochs": values.get("student_epochs"), "student_init": values.get("student_init"),
                 "student_augmentation": values.get("student_augmentation")}
        return cls(**{k: v for k, v in given.items() if v is not None})
