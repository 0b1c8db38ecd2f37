"""Voxel uncertainty for ``cad segment --uncertainty``: mirror test-time augmentation, then normalised entropy.

The network runs once per combination of the axes training mirrored (:attr:`ModelCard.mirror_axes`; the trainer's
default is left-right only, so 2 passes): a flip the network never saw in training (anterior-posterior for the
hippocampus, whose two labels lie along that axis) would add disagreement that says nothing about the scan. The
softmax of the passes is averaged, and each voxel's entropy divided by ln(number of classes) gives a value in
[0, 1]: 0 where every pass is certain of one class, 1 where the mean is uniform. The labels are the mean's argmax
(so ``--uncertainty`` can change a few boundary voxels against a plain run, and costs one network pass per view).

The entropy is computed on the working grid and brought to the input's exact grid like the probabilities (the
same uncrop, orientation and linear resampling); outside a cascade's region of interest, where the fine network
did not run, it is 0 (the coarse stage found background there).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cadcore.preprocessing.input_grid import probabilities_to_input_grid
from cadcore.preprocessing.working_space import WorkingImage
from cadcore.segmentation.sliding_window import flip_sets


def passes_for(mirror_axes: tuple[int, ...]) -> int:
    """Network passes of the mirror test-time augmentation (every combination of the axes, the identity too)."""
    return len(flip_sets(list(mirror_axes)))


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy over the first axis of (C, ...) probabilities divided by ln C: float32 in [0, 1]."""
    p = np.clip(probabilities.astype(np.float32, copy=False), 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(0) / math.log(probabilities.shape[0])
    return np.clip(entropy, 0.0, 1.0).astype(np.float32)


def entropy_on_input_grid(probabilities: np.ndarray, working: WorkingImage) -> np.ndarray:
    """(C, I, J, K) working-space mean probabilities -> (I, J, K) normalised entropy on the input grid (0 outside
    a foreground crop: background there), brought back as the probabilities are."""
    entropy = probabilities_to_input_grid(normalised_entropy(probabilities)[None], working,
                                          background_outside_crop=False)[0]
    return np.clip(entropy, 0.0, 1.0).astype(np.float32)


def method_text(mirror_axes: tuple[int, ...], n_classes: int) -> str:
    axes = ", ".join("IJK"[a] for a in mirror_axes) or "none"
    return (f"mirror test-time augmentation ({passes_for(mirror_axes)} passes: flips along working axes {axes}, the "
            f"axes training mirrored); entropy of the mean softmax / ln {n_classes}")


def uncertainty_summary(labels: np.ndarray, entropy: np.ndarray, label_infos: list[dict[str, Any]],
                        mirror_axes: tuple[int, ...], n_classes: int) -> dict[str, Any]:
    """The sidecar's ``uncertainty`` object (without ``file``): ``mean`` over every labelled voxel (the whole image
    when nothing is labelled), and per label over its voxels (0 for an empty label). ``labels`` and ``entropy``
    share one array order."""
    foreground = labels > 0
    overall = entropy[foreground] if foreground.any() else entropy
    per_label = []
    for info in label_infos:
        inside = labels == int(info["value"])
        per_label.append({"value": int(info["value"]), "name": str(info["name"]),
                          "mean": round(float(entropy[inside].mean()), 5) if inside.any() else 0.0})
    return {"method": method_text(mirror_axes, n_classes), "passes": passes_for(mirror_axes),
            "mean": round(float(overall.mean()), 5), "labels": per_label}
