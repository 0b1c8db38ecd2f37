"""Networks for model packages: specs for new models, and a package's stage built with its verified weights.

Building a network from a card's spec, and checking the weights fit it, live in :mod:`.architectures` (below
:mod:`.packages`, so verifying a package can use them); their names are re-exported here for the engine's callers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cadcore.errors import CadError
from cadcore.registry.architectures import (  # noqa: F401  (re-exported)
    CLASSIFICATION_NETWORKS,
    SEGMENTATION_NETWORKS,
    build_network,
    network_family,
)
from cadcore.registry.card import Stage
from cadcore.registry.packages import ModelPackage


def dynunet_spec(in_channels: int, out_channels: int, filters: list[int], strides: list[Any]) -> dict[str, Any]:
    """A DynUNet (nnU-Net-style) spec: kernel 3 everywhere, transposed-conv upsampling, instance norm."""
    return {
        "name": "DynUNet",
        "params": {
            "spatial_dims": 3,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "kernel_size": [3] * len(filters),
            "strides": strides,
            "upsample_kernel_size": strides[1:],
            "filters": filters,
            "norm_name": "instance",
            "res_block": False,
        },
    }


def strides_for(spacing: list[float] | None, levels: int) -> list[Any]:
    """Per-level strides that keep voxels close to isotropic (nnU-Net's rule): an axis is halved at a level only
    while its current spacing is at most twice the finest one, so 0.86 x 0.86 x 6.5 mm slices are first pooled
    in-plane ([2, 2, 1] twice) and only then through-plane. Near-isotropic data (or no spacing) gets stride 2 on
    every axis, as before, written as plain integers so existing cards stay byte-identical."""
    if not spacing or max(spacing) <= 2 * min(spacing):
        return [1] + [2] * (levels - 1)
    current = [float(v) for v in spacing]
    strides: list[Any] = [1]
    for _ in range(levels - 1):
        finest = min(current)
        step = [2 if value <= 2 * finest else 1 for value in current]
        current = [value * s for value, s in zip(current, step)]
        strides.append(step)
    return strides


def divisor_of(spec: Mapping[str, Any]) -> list[int]:
    """How a patch edge must be divisible for the network's downsampling (product of strides per axis)."""
    params = spec.get("params", {})
    strides = params.get("strides") or [1]
    total = [1, 1, 1]
    for stride in strides:
        values = stride if isinstance(stride, (list, tuple)) else [stride] * 3
        total = [t * int(s) for t, s in zip(total, values)]
    return total


_REUSED: dict[tuple[str, ...], Any] | None = None  # the networks kept inside reuse_networks(); None: keep none
_REUSED_LOCK = threading.Lock()


@contextmanager
def reuse_networks() -> Iterator[None]:
    """Within the block, :func:`load_network` returns the network it built before for the same weights file, stage
    (role, weight prefix, architecture) and device, so a ``cad batch`` worker reads, hashes and builds a model once,
    not once per case. Only for inference: the callers' in-place changes (``fold_batch_norm``, channels-last) are
    idempotent. On leaving, the networks are dropped, so no other caller keeps a cache it did not ask for; nested
    blocks share the outer one."""
    global _REUSED
    if _REUSED is not None:
        yield
        return
    _REUSED = {}
    try:
        yield
    finally:
        _REUSED = None


def load_network(package: ModelPackage, stage: Stage, device: Any = "cpu", state: dict[str, Any] | None = None):
    """``stage``'s network with its verified weights, in eval mode on ``device`` (``state``: the package's weights
    already read, when several stages are loaded). The weights are verified (hash, header, shapes against the card's
    networks built on the meta device) before the real network is built, so a card claiming a huge network is
    refused before anything is allocated. Inside :func:`reuse_networks` a network built before is returned."""
    reused = _REUSED
    if reused is None:
        return _built_network(package, stage, device, state)
    key = _reuse_key(package, stage, device)
    with _REUSED_LOCK:
        if key not in reused:
            reused[key] = _built_network(package, stage, device, state)
        return reused[key]


def load_networks(package: ModelPackage, stages: list[Stage], device: Any = "cpu") -> list[Any]:
    """Several stages' networks of one package with its weights read and verified once, and not at all inside
    :func:`reuse_networks` when every stage was built before (a batch's later cases)."""
    reused = _REUSED
    if reused is not None and all(_reuse_key(package, stage, device) in reused for stage in stages):
        return [load_network(package, stage, device) for stage in stages]
    state = package.load_state_dict()
    return [load_network(package, stage, device, state) for stage in stages]


def _reuse_key(package: ModelPackage, stage: Stage, device: Any) -> tuple[str, ...]:
    return (str(package.weights_path), stage.role, str(stage.weight_prefix),
            json.dumps(stage.network, sort_keys=True, default=str), str(device))


def _built_network(package: ModelPackage, stage: Stage, device: Any, state: dict[str, Any] | None):
    state = state if state is not None else package.load_state_dict()
    network = build_network(stage.network)
    load_weights(network, stage.weights_of(state), package.weights_path)
    return network.to(device).eval()


def load_weights(network: Any, state: dict[str, Any], source: str | Path = "") -> None:
    """Load weights strictly, except for keys that are aliases of loaded tensors inside ``network``."""
    own = network.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise CadError(f"weights do not fit the network (unexpected: {', '.join(unexpected[:3])}…)", source or None)
    loaded = {(own[name].untyped_storage().data_ptr(), own[name].storage_offset()) for name in state}
    missing = [name for name in own if name not in state and
               (own[name].untyped_storage().data_ptr(), own[name].storage_offset()) not in loaded]
    if missing:
        raise CadError(f"weights do not fit the network (missing: {', '.join(missing[:3])}…)", source or None)
    try:
        network.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CadError(f"weights do not fit the network ({str(exc).splitlines()[0]})", source or None) from exc
