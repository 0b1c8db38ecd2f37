"""Pseudo-labels for self-training: a teacher model labels unlabelled volumes, keeping only what it is sure of.

Per volume: the teacher's softmax probabilities, averaged over flips along the axes training mirrored (an average
of equally valid views is better calibrated than one pass, and costs nothing to learn), mapped back onto the
volume's own grid so the pseudo-label pairs with its image exactly like a manual label would. Voxels whose highest
class probability is below the confidence threshold become :data:`IGNORE_LABEL`, and so do voxels the card's
post-processing (largest component, hole filling) would change: there the network and the anatomical prior
disagree, and the student should learn neither answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cadcore.io.images import read_volume
from cadcore.io.writing import write_image
from cadcore.preprocessing.input_grid import labels_on_input_grid, probabilities_to_input_grid
from cadcore.preprocessing.working_space import prepare
from cadcore.registry.packages import ModelPackage
from cadcore.segmentation.postprocess import clean_labels
from cadcore.segmentation.sliding_window import tta_probabilities
from cadcore.training.losses import IGNORE_LABEL


def pseudo_label(probabilities: np.ndarray, threshold: float,
                 postprocessing: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """(C, I, J, K) probabilities → uint8 labels with :data:`IGNORE_LABEL` where the teacher is unsure, and counts.

    Kept: the highest probability is at least ``threshold`` and post-processing leaves the voxel's label as it is.
    A threshold above 1 therefore ignores everything, 0 keeps everything."""
    labels = probabilities.argmax(0).astype(np.uint8)
    unsure = probabilities.max(0) < threshold
    if postprocessing:
        unsure |= clean_labels(labels, postprocessing) != labels
    foreground = labels > 0
    counts = {"voxels": int(labels.size), "kept": int(labels.size - unsure.sum()),
              "foreground": int(foreground.sum()), "foreground_kept": int((foreground & ~unsure).sum())}
    labels[unsure] = IGNORE_LABEL
    return labels, counts


def label_volumes(teacher: ModelPackage, volumes: list[Path], folder: Path, threshold: float,
                  mirror_axes: list[int], device: torch.device, desc: str = "pseudo-labelling") -> dict[str, Any]:
    """Write ``folder/<case id>.nii.gz`` for every volume (each file atomically); returns the counts and, per case,
    the label file. The caller writes the dataset description only after every file is in place."""
    from cadcore.io.datasets import case_id
    from cadcore.registry.networks import load_network

    folder.mkdir(parents=True, exist_ok=True)
    card = teacher.card
    stage = card.main_stage
    network = load_network(teacher, stage, device)
    patch = list(stage.inference.patch_size or ())
    totals = {"voxels": 0, "kept": 0, "foreground": 0, "foreground_kept": 0}
    files: dict[str, str] = {}
    for path in tqdm(volumes, desc=desc, unit="volume"):
        image = read_volume(path)
        working = prepare(image, stage.preprocessing)
        probabilities = tta_probabilities(network, working.array, patch, device, mirror_axes, stage.inference.overlap)
        on_grid = probabilities_to_input_grid(probabilities, working)
        labels, counts = pseudo_label(on_grid, threshold, card.postprocessing)
        for key, value in counts.items():
            totals[key] += value
        target = folder / f"{case_id(path)}.nii.gz"
        write_image(labels_on_input_grid(labels, image), target)
        files[case_id(path)] = str(target)
    return {**totals,
            "kept_voxel_fraction": round(totals["kept"] / max(1, totals["voxels"]), 4),
            "kept_foreground_fraction": round(totals["foreground_kept"] / max(1, totals["foreground"]), 4),
            "files": files}
