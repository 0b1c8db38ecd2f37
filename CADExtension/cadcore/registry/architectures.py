"""Building the networks a model card describes, and checking a weights file fits them before either is touched.

Cards name a MONAI class and its keyword arguments, so any architecture MONAI ships can be described in JSON without
code; only the classes listed here may be built (a card cannot make us import arbitrary code). A DynUNet is built
from the engine's own equal class (:mod:`.dynunet`) whenever it reproduces the card's parameters exactly, so
verifying and loading the shipped packages imports no MONAI; training, and anything else, uses MONAI's class.

:func:`check_weights_fit` builds every network of a card on PyTorch's ``meta`` device (shapes only, no memory) and
compares each parameter's name and shape with the safetensors header. A card that claims a 20 000-channel layer
next to a 5 MB weights file is thus refused in milliseconds, instead of allocating 43 GB for the real network; a card
edited by hand (``filters`` changed) is refused naming the first tensor that no longer fits. This module sits below
:mod:`.packages` (it imports only the card and the header reader), so ``ModelPackage.verify`` can use it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cadcore.errors import CadError
from cadcore.registry.card import ModelCard, Stage
from cadcore.registry.dynunet import DynUNet, engine_supports
from cadcore.registry.safetensors_header import TensorInfo

SEGMENTATION_NETWORKS = ("UNet", "DynUNet", "SegResNet", "BasicUNet")
CLASSIFICATION_NETWORKS = ("ResNet", "DenseNet121", "DenseNet169")
CARD_FIELD = {"main": "network", "fine": "network", "coarse": "cascade.coarse.network", "fast": "fast.network"}


def network_family(spec: Mapping[str, Any]) -> str:
    return str(spec.get("name", ""))


# Networks that are not MONAI's, written in the engine (from published topologies and state dicts): card name →
# (module, class). A fixed table, like the MONAI list: a card can only pick one of these, never name code.
ENGINE_NETWORKS = {
    "MeshNet": ("cadcore.registry.meshnet", "MeshNet"),
    "HippodeepHead": ("cadcore.registry.hippodeep_networks", "HippodeepHead"),
    "HippodeepAffine": ("cadcore.registry.hippodeep_networks", "HippodeepAffine"),
    "HippodeepHippo": ("cadcore.registry.hippodeep_networks", "HippodeepHippo"),
}


def build_network(spec: Mapping[str, Any], for_training: bool = False) -> torch.nn.Module:
    """Instantiate ``spec = {"name": <MONAI class or ENGINE_NETWORKS name>, "params": {...}}``.

    A DynUNet the engine reproduces exactly (:func:`.dynunet.engine_supports`) is the engine's own class, so
    verifying, loading and running a package imports no MONAI (start-up time); ``for_training`` asks for MONAI's
    class, whose train-mode forward gives the deep-supervision outputs training uses."""
    name = network_family(spec)
    params = dict(spec.get("params", {}))
    if name == "DynUNet" and not for_training and engine_supports(params):
        return DynUNet(**params)
    if name in ENGINE_NETWORKS:
        import importlib

        module, attribute = ENGINE_NETWORKS[name]
        try:
            return getattr(importlib.import_module(module), attribute)(**params)
        except (TypeError, ValueError, AssertionError, KeyError, IndexError) as exc:
            raise CadError(f"network parameters do not fit {name}: {exc}") from exc
    from cadcore.registry.monai_import import import_monai

    import_monai()  # without matplotlib, scipy.signal/stats, sklearn: start-up time (see that module)
    import monai.networks.nets as nets

    if name not in SEGMENTATION_NETWORKS + CLASSIFICATION_NETWORKS:
        raise CadError(f"unsupported network {name!r} in model card")
    if name == "ResNet":
        from monai.networks.nets.resnet import ResNetBlock

        params.setdefault("block", ResNetBlock)
    try:
        return getattr(nets, name)(**params)
    except (TypeError, ValueError, AssertionError, KeyError, IndexError) as exc:
        raise CadError(f"network parameters do not fit {name}: {exc}") from exc


def stages_of(card: ModelCard) -> list[tuple[str, Stage]]:
    """Every network stored in the card's weights, with the card field that describes it (duplicates dropped: a fast
    mode without its own network, or ensemble members, reuse a spec under their own prefix)."""
    stages = [(CARD_FIELD["main"], card.main_stage)]
    if card.cascade is not None:
        stages.append((CARD_FIELD["coarse"], card.cascade.coarse))
    if card.fast is not None:
        stages.append((CARD_FIELD["fast"] if card.fast.network is not None else "network", card.fast_stage()))
    if card.ensemble_members:
        stages = [("network", stage) for stage in card.member_stages()]
    if card.pipeline is not None:
        stages += [(f"pipeline.networks.{stage.role}", stage) for stage in card.pipeline.stages]
    unique: dict[tuple[str, str, tuple[str, ...]], tuple[str, Stage]] = {}
    for where, stage in stages:
        key = (json.dumps(stage.network, sort_keys=True, default=str), stage.weight_prefix, stage.foreign_prefixes)
        unique.setdefault(key, (where, stage))
    return list(unique.values())


# Initialisers only change values, which the meta device does not hold; running them on meta tensors costs nothing
# but the first call imports PyTorch's Python decompositions (~800 modules, seconds), so they are skipped.
_VALUE_ONLY_OPS = frozenset({"normal_", "uniform_", "fill_", "zero_", "erfinv_", "mul_", "add_", "sub_", "div_",
                             "clamp_", "copy_", "exp_", "sqrt_", "random_", "bernoulli_", "exponential_"})


class _SkipMetaInit(torch.overrides.TorchFunctionMode):
    """Skips value-only in-place operations on meta tensors (shapes are all the fit check reads)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204  (torch's protocol)
        if (getattr(func, "__name__", "") in _VALUE_ONLY_OPS and args and isinstance(args[0], torch.Tensor)
                and args[0].is_meta):
            return args[0]
        return func(*args, **(kwargs or {}))


def meta_shapes(spec: Mapping[str, Any], where: str, card_path: Path | None) -> list[list[tuple[str, tuple]]]:
    """The network's tensors as groups of aliased names (DynUNet registers some weights twice) with their shape,
    built on the meta device: no memory is allocated, whatever the card claims."""
    try:
        with torch.device("meta"), _SkipMetaInit():
            network = build_network(spec)
    except CadError as exc:
        raise CadError(f"model card field {where!r}: {one_line(exc)}", card_path) from exc
    except Exception as exc:  # MONAI constructors raise anything on nonsense parameters
        raise CadError(f"model card field {where!r} cannot be built ({type(exc).__name__}: {one_line(exc)})",
                       card_path) from exc
    groups: dict[int, list[tuple[str, tuple]]] = {}
    for name, tensor in network.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append((name, tuple(tensor.shape)))
    return list(groups.values())


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def check_weights_fit(card: ModelCard, tensors: Mapping[str, TensorInfo], weights_path: Path) -> None:
    """Refuse, naming ``weights_path`` and the first tensor that does not fit, weights whose header does not match
    the networks the card describes: a missing or unexpected tensor, or a shape that differs. Baseline classifiers
    store feature arrays, not a network, and are not checked here."""
    if card.is_baseline:
        return
    claimed: set[str] = set()
    for where, stage in stages_of(card):
        own = stage.weights_of(tensors)
        claimed |= {stage.weight_prefix + name for name in own}
        groups = meta_shapes(stage.network, where, card.path)
        for group in groups:
            present = [(name, shape) for name, shape in group if name in own]
            if not present:
                raise CadError(f"lacks tensor {stage.weight_prefix + group[0][0]!r} that the card's {where!r} needs",
                               weights_path)
            for name, shape in present:
                if own[name].shape != shape:
                    raise CadError(f"tensor {stage.weight_prefix + name!r} has shape {list(own[name].shape)} but the "
                                   f"card's {where!r} needs {list(shape)}", weights_path)
        expected = {name for group in groups for name, _ in group}
        unexpected = sorted(set(own) - expected)
        if unexpected:
            raise CadError(f"tensor {stage.weight_prefix + unexpected[0]!r} is not part of the card's {where!r}",
                           weights_path)
    stray = sorted(set(tensors) - claimed)
    if stray:
        raise CadError(f"tensor {stray[0]!r} belongs to none of the card's networks", weights_path)
