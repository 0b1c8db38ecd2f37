"""Turn dataset cases into working-space arrays and augmented training patches (MONAI transforms), and choose
which case each patch comes from (:func:`case_sampler`: uniform, or in proportion to dataset.json ``weight``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from cadcore.errors import CadError
from cadcore.io.datasets import Case
from cadcore.io.images import check_same_grid, read_image, read_volume
from cadcore.preprocessing.working_space import prepare, prepare_label
from cadcore.training.losses import IGNORE_LABEL


@dataclass
class PreparedCase:
    id: str
    image: np.ndarray  # (1, I, J, K) float32
    label: np.ndarray  # (1, I, J, K) uint8
    weight: float = 1.0  # the case's sampling weight (dataset.json ``weight``)
    labels_present: tuple[int, ...] | None = None  # partly labelled: the labels contoured here (None: all)

    def present_mask(self, label_values: list[int]) -> np.ndarray:
        """(1 + len(label_values),) float32: 1 for background and each label contoured in this case, 0 for an absent
        one (the ``present`` argument of :class:`cadcore.training.losses.MaskedDiceCELoss`)."""
        known = self.labels_present
        return np.array([1.0] + [float(known is None or v in known) for v in label_values], dtype=np.float32)


def prepare_cases(cases: list[Case], preprocessing: dict[str, Any], allowed_labels: set[int] | None,
                  desc: str = "loading") -> list[PreparedCase]:
    """Read, check and preprocess every case once (small datasets stay in memory).

    A pseudo-labelled case may also contain :data:`IGNORE_LABEL` (voxels the teacher was unsure of); anywhere else
    that value is an error like any value outside the label set. A partly labelled case's label may hold only the
    values its ``labels_present`` lists (a contour of an "absent" organ means the entry is wrong)."""
    prepared = []
    for case in tqdm(cases, desc=desc, leave=False):
        image = read_volume(case.image)
        if case.label is None:
            raise CadError("case has no label", case.image)
        label = read_image(case.label)
        check_same_grid(image, label, case.label, case.image)
        working = prepare(image, preprocessing)
        label_array = prepare_label(label, working, preprocessing)
        if allowed_labels is not None:
            accepted = allowed_labels | ({IGNORE_LABEL} if case.pseudo else set())
            extra = sorted(set(np.unique(label_array).tolist()) - accepted - {0})
            if extra:
                raise CadError(f"label values {extra} are not in the model's label set {sorted(allowed_labels)}",
                               case.label)
        if case.labels_present is not None:
            contoured = sorted(set(np.unique(label_array).tolist()) - set(case.labels_present) - {0, IGNORE_LABEL})
            if contoured:
                raise CadError(f"label values {contoured} are drawn but the dataset entry's labels_present "
                               f"{list(case.labels_present)} omits them", case.label)
        prepared.append(PreparedCase(case.id, working.array[None], label_array[None], case.weight,
                                     case.labels_present))
    return prepared


def augmentation(patch_size: list[int], mirror_axes: list[int], strength: float = 1.0, crop_key: str = "label"):
    """Random patch (2:1 foreground:background), rotation, scaling, translation, mirroring, intensity, gamma.

    ``crop_key``: the array whose non-zero voxels count as foreground when choosing patch centres; a dataset with
    ignored voxels passes ``"foreground"`` (see :class:`PatchDataset`), so that "unknown" is not taken for
    foreground."""
    from monai import transforms as T

    keys = ["image", "label"]
    angle = np.deg2rad(15) * strength
    steps = [
        T.SpatialPadd(keys if crop_key in keys else [*keys, crop_key], spatial_size=patch_size),
        T.RandCropByPosNegLabeld(keys, label_key=crop_key, spatial_size=patch_size, pos=2, neg=1, num_samples=1),
        T.RandAffined(keys, prob=0.5, rotate_range=(angle, angle, angle), scale_range=(0.15 * strength,) * 3,
                      translate_range=(3, 3, 3), mode=("bilinear", "nearest"), padding_mode="zeros"),
    ]
    steps += [T.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in mirror_axes]
    steps += [
        T.RandScaleIntensityd("image", factors=0.1, prob=0.5),
        T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
        T.EnsureTyped(keys, track_meta=False),
    ]
    return T.Compose(steps)


class PatchDataset:
    """A torch-style dataset that draws one augmented patch per case per epoch.

    ``foreground=True`` adds a ``"foreground"`` mask (labelled and not ignored) for ``augmentation(crop_key=...)``.
    ``label_values`` (partly labelled data) adds each sample's ``"present"`` mask (:meth:`PreparedCase.present_mask`).
    """

    def __init__(self, cases: list[PreparedCase], transform, foreground: bool = False,
                 label_values: list[int] | None = None) -> None:
        self.cases = cases
        self.transform = transform
        self.foreground = foreground
        self.label_values = label_values

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        data = {"image": case.image, "label": case.label}
        if self.foreground:
            data["foreground"] = (case.label > 0) & (case.label != IGNORE_LABEL)
        sample = self.transform(data)
        sample = sample[0] if isinstance(sample, list) else sample
        out = {"image": sample["image"].float(), "label": sample["label"].long()}
        if self.label_values is not None:
            import torch

            out["present"] = torch.from_numpy(case.present_mask(self.label_values))
        return out


class WeightedShardSampler:
    """Case indices drawn with replacement in proportion to their weights, the same draw on every rank (seeded by
    ``seed + epoch``), each rank taking every ``world``-th index: DDP keeps one shard per rank, of equal length on all
    ranks (a rank with fewer batches would hang the gradient all-reduce).

    Not torch's ``WeightedRandomSampler``: it has no ``set_epoch`` and no notion of ranks, so under DDP every rank
    would draw its own (overlapping) sample and an epoch's draw would depend on the loader's generator state."""

    def __init__(self, weights: list[float], rank: int = 0, world: int = 1, seed: int = 0,
                 num_samples: int | None = None) -> None:
        values = np.asarray(weights, dtype=np.float64)
        if values.ndim != 1 or not len(values) or not np.all(np.isfinite(values)) or np.any(values < 0) \
                or values.sum() <= 0:
            raise CadError(f"case sampling weights must be finite numbers >= 0, not all 0, got {weights!r}"[:200])
        self.weights = values / values.sum()
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, 0
        self.per_rank = math.ceil((num_samples or len(values)) / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        drawn = rng.choice(len(self.weights), size=self.per_rank * self.world, replace=True, p=self.weights)
        return iter(drawn[self.rank::self.world].tolist())


def case_sampler(dataset: PatchDataset, ranks, seed: int):
    """The training loader's sampler: :class:`WeightedShardSampler` when the cases' weights differ; otherwise what
    training used before weights existed (``None``: the loader shuffles; under DDP a ``DistributedSampler``).

    An epoch still draws as many patches as there are cases, so epochs, learning-rate schedules and validation
    intervals keep their meaning; weights only change which cases the patches come from."""
    from cadcore.training.distributed import sampler

    weights = [case.weight for case in dataset.cases]
    if len(set(weights)) <= 1:
        return sampler(dataset, ranks, seed)
    return WeightedShardSampler(weights, ranks.rank, ranks.world, seed)
