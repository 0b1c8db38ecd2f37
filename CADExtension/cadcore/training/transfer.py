"""Transfer learning: start ``cad train`` from another model package's weights (``--init MODEL``).

Layers whose names and shapes match are loaded; the rest (typically the output layer when the label set differs)
keep their fresh initialisation, and a report says which. The new network reuses the parent's architecture, with
the output channels of the new label set and, for a DynUNet, the strides that suit the new working spacing
(``strides_for``): a parent trained on isotropic voxels fine-tuned on 6.5 mm slices pools in-plane first, and only
its upsampling kernels, whose shape follows the strides, start fresh.
Optionally the encoder is frozen for the first epochs, and pretrained
layers learn at a lower rate than re-initialised ones.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from cadcore.errors import CadError
from cadcore.registry.card import Stage
from cadcore.registry.networks import network_family, strides_for
from cadcore.registry.packages import ModelPackage, find_model

ENCODER_PREFIXES = ("input_block", "downsamples", "bottleneck", "model.0", "conv1", "layer1", "layer2", "features")


CASCADE_STAGES = ("coarse", "fine")


def parent_stage(parent: ModelPackage, stage: str | None) -> Stage:
    """The stage of ``parent`` a training starts from: its network, or one stage of a cascade (whose weights are
    stored as ``coarse.*`` and ``fine.*``, so a whole cascade can only seed a cascade, stage by stage)."""
    cascade = parent.card.cascade
    if cascade is None:
        return parent.card.main_stage
    if stage not in CASCADE_STAGES:
        raise CadError("--init model is a coarse-to-fine cascade: fine-tune it with --cascade (each stage starts "
                       "from its own stage's weights), or --init from a single-stage model", parent.folder)
    return cascade.coarse if stage == "coarse" else parent.card.main_stage


def parent_spec(init: str, family: str, n_classes: int, spacing: list[float] | None = None,
                stage: str | None = None) -> tuple[ModelPackage, dict[str, Any]]:
    """The parent package and its (``stage``'s, for a cascade) network spec with ``n_classes`` outputs (and, given
    the working ``spacing``, a DynUNet's strides for it); refuses another network family."""
    parent = find_model(init)
    network = parent_stage(parent, stage).network
    parent_family = network_family(network)
    if parent.task != "segmentation" or parent_family != family:
        raise CadError(f"--init model is a {parent.task} {parent_family} network; this training builds a "
                       f"segmentation {family}", parent.folder)
    spec = copy.deepcopy(network)
    spec["params"]["out_channels"] = n_classes
    params = spec["params"]
    if spacing and family == "DynUNet" and params.get("filters"):
        strides = strides_for(spacing, len(params["filters"]))
        if strides != params.get("strides"):
            params["strides"], params["upsample_kernel_size"] = strides, strides[1:]
    return parent, spec


def load_pretrained(network: torch.nn.Module, parent: ModelPackage, stage: str | None = None) -> dict[str, Any]:
    """Load every parameter whose name and shape match (of ``stage``'s weights, for a cascade); return the report
    of what was loaded and what was not."""
    state = parent_stage(parent, stage).weights_of(parent.load_state_dict())
    own = network.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    mismatched = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    network.load_state_dict(loaded, strict=False)
    storage = {own[k].untyped_storage().data_ptr() for k in loaded}
    fresh = sorted(k for k in own if k not in loaded and own[k].untyped_storage().data_ptr() not in storage)
    return {"parent": parent.id, "parent_version": parent.version, "parent_sha256": parent.card.weights.sha256,
            **({"parent_stage": stage} if parent.card.cascade is not None else {}), "loaded": len(loaded),
            "reinitialised": fresh, "shape_mismatch": mismatched}


def parameter_groups(network: torch.nn.Module, report: dict[str, Any], learning_rate: float,
                     pretrained_factor: float) -> list[dict[str, Any]]:
    """Pretrained parameters at ``learning_rate * pretrained_factor``, re-initialised ones at ``learning_rate``."""
    fresh = set(report["reinitialised"])
    pretrained, new = [], []
    for name, parameter in network.named_parameters():
        (new if name in fresh else pretrained).append(parameter)
    groups = [{"params": pretrained, "lr": learning_rate * pretrained_factor, "initial_lr_factor": pretrained_factor}]
    if new:
        groups.append({"params": new, "lr": learning_rate, "initial_lr_factor": 1.0})
    return groups


def set_encoder_frozen(network: torch.nn.Module, frozen: bool) -> int:
    """Freeze (or unfreeze) the encoder's parameters; returns how many tensors changed."""
    count = 0
    for name, parameter in network.named_parameters():
        if name.startswith(ENCODER_PREFIXES):
            parameter.requires_grad_(not frozen)
            count += 1
    return count
