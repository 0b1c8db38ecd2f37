"""Transfer learning: start ``cad train`` from another model package's weights (``--init MODEL``).

Layers whose names and shapes match are loaded; the rest (typically the output layer when the label set differs)
keep their fresh initialisation, and a report says which. The new network reuses the parent's architecture, with
the output channels of the new label set and, for a DynUNet, the strides that suit the new working spacing
(``strides_for``): a parent trained on isotropic voxels fine-tuned on 6.5 mm slices pools in-plane first, and only
its upsampling kernels, whose shape follows the strides, start fresh.
Optionally the encoder is frozen for the first epochs, and pretrained
layers learn at a lower rate than re-initialised ones.

The child keeps what the parent knows (:func:`parent_label_entries`, :func:`child_version`) and must not validate
on what the parent learnt (:func:`check_parent_overlap`).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch

from cadcore.errors import CadError
from cadcore.io.datasets import Case, Dataset
from cadcore.registry.card import ModelCard, Stage
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


def parent_spec(init: str | ModelPackage, family: str, n_classes: int, spacing: list[float] | None = None,
                stage: str | None = None) -> tuple[ModelPackage, dict[str, Any]]:
    """The parent package and its (``stage``'s, for a cascade) network spec with ``n_classes`` outputs (and, given
    the working ``spacing``, a DynUNet's strides for it); refuses another network family."""
    parent = init if isinstance(init, ModelPackage) else find_model(init)
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


# --- what the child keeps of the parent, and what it must not validate on ------------------------------------------


def _words(name: str) -> set[str]:
    return set(re.findall(r"[^\W_]+", name.casefold()))


def same_structure(parent_name: str, dataset_name: str) -> bool:
    """Whether a dataset's label name names the parent's structure: ignoring case and punctuation, all the words of
    one are among the other's ("Anterior hippocampus" and "anterior (hippocampus head)"; not "left kidney" and
    "right kidney")."""
    a, b = _words(parent_name), _words(dataset_name)
    return bool(a and b) and (a <= b or b <= a)


def parent_label_entries(parent: ModelCard, values: list[int], names: dict[int, str]) -> dict[int, dict[str, Any]]:
    """The parent's card entries (name, colour, terminology) the child keeps, by label value.

    A value keeps the parent's entry when the dataset names it not at all, or with a name of the same structure
    (:func:`same_structure`); a value the dataset names otherwise is another structure (the parent's terminology
    would describe the wrong thing) and, like a value the parent lacks, is not in the result."""
    own = {label.value: label for label in parent.labels}
    kept = {}
    for value in values:
        if value in own and (value not in names or same_structure(own[value].name, names[value])):
            kept[value] = own[value].as_dict()
    return kept


def parent_label_values(parent: ModelCard) -> list[int]:
    """The label set a dataset that names none (an images/labels folder) takes from the parent."""
    return sorted(label.value for label in parent.labels)


def child_version(parent_version: str) -> str | None:
    """The parent's version with the minor part incremented and what follows reset ("1.0.0" -> "1.1.0", "2" ->
    "2.1"); None when it does not start with a number (the caller keeps its own)."""
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?((?:\.\d+)*)(.*)", parent_version.strip())
    if not match:
        return None
    major, minor, rest = match.group(1), match.group(2), match.group(3)
    if minor is None:
        return f"{major}.1"
    return ".".join([major, str(int(minor) + 1), *["0"] * rest.count(".")])


def check_parent_overlap(parent: ModelPackage, dataset: Dataset, train_cases: list[Case], val_cases: list[Case],
                         allow: bool, source: str) -> dict[str, Any]:
    """Refuse validation cases the parent may have trained on; returns the card's record of the check.

    A card lists its held-out case ids (``training.split.val``) and names its training data (``training.data``),
    not its training ids. The new dataset is taken to hold the parent's training data when the parent names it
    (``dataset.json``'s ``name`` or the dataset's folder) or when it holds one of the parent's held-out ids; then a
    validation case the parent does not list as held out may be one it trained on, and validating on it would score
    the parent's memory. Refused unless ``allow`` (``--allow-overlap``); otherwise nothing can be told (recorded so).
    """
    held_out = set(parent.card.validation_ids)
    data = parent.card.training.get("data")
    named = data is not None and str(data) in {dataset.name, str(dataset.root)}
    shared = held_out & {case.id for case in train_cases + val_cases}
    if not (named or shared):
        return {"checked": False, "basis": "the parent card holds out none of these cases and names other training "
                                           f"data ({data!r})" if data is not None else
                                           "the parent card records no training data"}
    leaked = sorted(case.id for case in val_cases if case.id not in held_out)
    if leaked and not allow:
        shown = ", ".join(leaked[:5]) + (f" and {len(leaked) - 5} more" if len(leaked) > 5 else "")
        raise CadError(f"validation cases {shown} may be in the training data of --init model {parent.id} (its card "
                       f"holds out {len(held_out)} cases of it, not these): validate on cases it held out (a "
                       "dataset.json 'validation' list) or give --allow-overlap", source)
    basis = ("the parent card names this dataset as its training data" if named else
             f"this dataset holds {len(shared)} of the parent card's held-out cases")
    return {"checked": True, "basis": basis, "validation_cases_parent_trained_on": leaked,
            **({"allowed": True} if leaked else {})}
