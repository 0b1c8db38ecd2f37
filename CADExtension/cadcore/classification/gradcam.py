"""Grad-CAM heatmaps (MONAI ``GradCAM``), normalised so that 1 is the most relevant voxel."""

from __future__ import annotations

import numpy as np
import torch


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max to [0, 1], 1 = most relevant; a constant map becomes 1 if positive, else 0 (no evidence).

    MONAI's ``default_normalizer`` maps (min, max) to (1, 0), i.e. it flips the map (Project-MONAI/tutorials#1796).
    """
    x = x.detach()
    flat = x.flatten(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    low, high = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
    return torch.where(high > low, (x - low) / (high - low).clamp_min(1e-12), (x > 0).to(x.dtype))


def gradcam(network: torch.nn.Module, x: torch.Tensor, class_index: int, layer: str) -> np.ndarray:
    """Grad-CAM (MONAI) of one class for a batch (N, C, I, J, K): (N, I, J, K) in [0, 1], 1 = most relevant.

    The network runs in eval mode, so each sample's map is the one it gets alone. MONAI leaves its hooks on the
    module: pass a copy when calling this many times on one network.
    """
    from monai.visualize import GradCAM

    cam = GradCAM(nn_module=network, target_layers=layer, postprocessing=_minmax)
    with torch.enable_grad():
        values = cam(x.clone().requires_grad_(True), class_idx=class_index)
    return values[:, 0].detach().cpu().numpy().astype(np.float32)


def gradcam_on_roi(network: torch.nn.Module, x: torch.Tensor, class_index: int, layer: str) -> np.ndarray:
    """Grad-CAM (MONAI) for one class, (I, J, K) in [0, 1] on the ROI grid (1 = most relevant)."""
    return gradcam(network, x, class_index, layer)[0]
