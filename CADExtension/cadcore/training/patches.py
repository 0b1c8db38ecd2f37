"""Turn dataset cases into working-space arrays and augmented training patches (MONAI transforms)."""

from __future__ import annotations

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


def prepare_cases(cases: list[Case], preprocessing: dict[str, Any], allowed_labels: set[int] | None,
                  desc: str = "loading") -> list[PreparedCase]:
    """Read, check and preprocess every case once (small datasets stay in memory).

    A pseudo-labelled case may also contain :data:`IGNORE_LABEL` (voxels the teacher was unsure of); anywhere else
    that value is an error like any value outside the label set."""
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
        prepared.append(PreparedCase(case.id, working.array[None], label_array[None]))
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
    """

    def __init__(self, cases: list[PreparedCase], transform, foreground: bool = False) -> None:
        self.cases = cases
        self.transform = transform
        self.foreground = foreground

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        data = {"image": case.image, "label": case.label}
        if self.foreground:
            data["foreground"] = (case.label > 0) & (case.label != IGNORE_LABEL)
        sample = self.transform(data)
        sample = sample[0] if isinstance(sample, list) else sample
        return {"image": sample["image"].float(), "label": sample["label"].long()}
