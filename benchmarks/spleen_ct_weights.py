"""Trained weights for the spleen-bundle network, so the CPU inference benchmark compares outputs that mean something.

Random weights put most voxels near the decision boundary, where any interpolation difference flips labels; a trained
network is confident almost everywhere, as real models are. This fits the MONAI ``spleen_ct_segmentation`` network
(UNet 16-256, 2 residual units, batch norm) to the spleen of the one labelled CT here (TotalSegmentator example CT,
first 30 slices, with its model-made spleen mask), at the bundle's 1.5x1.5x2 mm with linear resampling (what MONAI's
``Spacingd`` does, so the card says ``"interpolation": "linear"``), plus a second copy at 3 mm for ``--fast`` (the
card's ``fast`` section, weights under ``fast.``), the way TotalSegmentator's fast mode is its own 3 mm model.

It is a benchmark fixture, not a model: one training volume, no held-out CT, so no accuracy is claimed from it.

    .venv/bin/python benchmarks/spleen_ct_weights.py [--steps 150] [-o runs/bench/spleen-trained]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO.parent / "shared" / "data" / "totalsegmentator_examples"
NETWORK = {"name": "UNet", "params": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                      "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
                                      "num_res_units": 2, "norm": "batch"}}
PREPROCESSING = {"orientation": "RAS", "spacing": [1.5, 1.5, 2.0], "interpolation": "linear",
                 "normalization": {"kind": "ct", "window": [-57.0, 164.0]}}
FAST_SPACING = [3.0, 3.0, 3.0]
PATCH = [96, 96, 96]
SPLEEN = 1  # TotalSegmentator "total" class 1


def working_pair(spacing: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(image, spleen mask) in the working space at ``spacing``, padded to at least one patch."""
    import SimpleITK as sitk

    from cadcore.preprocessing.working_space import prepare, prepare_label

    preprocessing = {**PREPROCESSING, "spacing": spacing}
    working = prepare(sitk.ReadImage(str(EXAMPLES / "example_ct_sm.nii.gz")), preprocessing)
    label = prepare_label(sitk.ReadImage(str(EXAMPLES / "example_seg.nii.gz")), working, preprocessing)
    image, mask = working.array, (label == SPLEEN).astype(np.int64)
    pad = [(0, max(0, p - s)) for p, s in zip(PATCH, image.shape)]
    return np.pad(image, pad), np.pad(mask, pad)


def fit(image: np.ndarray, mask: np.ndarray, steps: int, seed: int) -> dict:
    """Random 96³ windows, two in three centred on the spleen; Dice + cross-entropy; Adam with cosine decay."""
    import torch
    from monai.losses import DiceCELoss

    from cadcore.registry.networks import build_network

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_network(NETWORK).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    spleen = np.argwhere(mask > 0)
    high = np.array(image.shape) - np.array(PATCH)

    def window() -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < 2 / 3:
            centre = spleen[rng.integers(len(spleen))]
            start = np.clip(centre - np.array(PATCH) // 2, 0, high)
        else:
            start = np.array([rng.integers(h + 1) for h in high])
        box = tuple(slice(s, s + p) for s, p in zip(start, PATCH))
        return image[box], mask[box]

    for step in range(steps):
        pairs = [window() for _ in range(2)]
        x = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None].float()
        y = torch.from_numpy(np.stack([p[1] for p in pairs]))[:, None]
        loss = loss_fn(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 10 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    return network.eval().state_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--fast-steps", type=int, default=100)
    parser.add_argument("-o", "--output", type=Path, default=REPO / "runs" / "bench" / "spleen-trained")
    args = parser.parse_args()
    from cadcore.device import configure_cpu_threads
    from cadcore.registry.packages import save_package

    configure_cpu_threads()
    started = time.perf_counter()
    full = fit(*working_pair(PREPROCESSING["spacing"]), args.steps, seed=0)
    fast = fit(*working_pair(FAST_SPACING), args.fast_steps, seed=1)
    seconds = round(time.perf_counter() - started, 1)
    card = {"format_version": 1, "id": args.output.name, "version": "0.0.0", "task": "segmentation", "modality": "CT",
            "description": "MONAI spleen_ct_segmentation network fitted to one example CT (benchmark fixture only)",
            "network": NETWORK, "labels": [{"value": 1, "name": "Spleen", "color": [0.62, 0.24, 0.24]}],
            "preprocessing": PREPROCESSING,
            "inference": {"patch_size": PATCH, "overlap": 0.25, "mode": "gaussian"}, "postprocessing": {},
            "fast": {"spacing": FAST_SPACING, "network": NETWORK},
            "training": {"data": "TotalSegmentator example CT (first 30 slices) and its model-made spleen mask",
                         "steps": args.steps, "fast_steps": args.fast_steps, "seconds": seconds,
                         "command": "benchmarks/spleen_ct_weights.py"}}
    state = {**full, **{f"fast.{k}": v for k, v in fast.items()}}
    package = save_package(args.output, card, state)
    print(json.dumps({"package": str(package.folder), "seconds": seconds}))


if __name__ == "__main__":
    main()
