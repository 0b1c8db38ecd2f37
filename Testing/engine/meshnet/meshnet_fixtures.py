"""Tiny brainchop-style TensorFlow.js MeshNets written by the tests themselves, and the converter loaded from tools/."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
WEIGHTS = REPO.parent / "shared" / "weights"


def converter():
    """tools/convert_brainchop.py as a module (tools/ is not a package: it is run once by a maintainer)."""
    spec = importlib.util.spec_from_file_location("convert_brainchop", REPO / "tools" / "convert_brainchop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tfjs(folder: Path, dilations=(1, 2), channels: int = 3, classes: int = 2, activation: str = "elu",
               groupnorm: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """A tfjs layers-model (model.json + one shard + colormap.json) of a MeshNet; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    layers = [{"class_name": "InputLayer", "config": {"batch_input_shape": [None, 32, 32, 32, 1], "name": "input"}}]
    weights, arrays, width = [], {}, 1
    for index, dilation in enumerate([*dilations, None]):
        last = dilation is None
        name = "output" if last else (f"conv3d_{index}_gn" if groupnorm else f"conv3d_{index}")
        out, size = (classes, 1) if last else (channels, 3)
        bias = last or not groupnorm
        layers.append({"class_name": "Conv3D", "config": {
            "name": name, "filters": out, "kernel_size": [size] * 3, "strides": [1, 1, 1], "padding": "same",
            "dilation_rate": [dilation or 1] * 3, "activation": "linear", "use_bias": bias,
            "data_format": "channels_last"}})
        if not last:
            layers.append({"class_name": "Activation", "config": {"name": f"act_{index}", "activation": activation}})
        arrays[f"{name}/kernel"] = rng.normal(0, 0.5, (size, size, size, width, out)).astype(np.float32)
        weights.append({"name": f"{name}/kernel", "shape": [size, size, size, width, out], "dtype": "float32"})
        if bias:
            arrays[f"{name}/bias"] = rng.normal(0, 0.1, (out,)).astype(np.float32)
            weights.append({"name": f"{name}/bias", "shape": [out], "dtype": "float32"})
        width = out
    spec = {"format": "layers-model", "modelTopology": {"model_config": {"config": {"layers": layers}}},
            "weightsManifest": [{"paths": ["group1-shard1of1.bin"], "weights": weights}]}
    (folder / "model.json").write_text(json.dumps(spec))
    (folder / "group1-shard1of1.bin").write_bytes(b"".join(arrays[w["name"]].tobytes() for w in weights))
    colormap = {"R": [0, 200, 10, 90][:classes], "G": [0, 50, 200, 90][:classes], "B": [0, 50, 10, 200][:classes],
                "labels": ["background", "Hippocampus", "Brain-Stem", "other"][:classes]}
    (folder / "colormap.json").write_text(json.dumps(colormap))
    return arrays


def make_meshnet_package(folder: Path, source: Path, **pipeline):
    """A package converted from the tfjs model in ``source`` by the real converter, with small conform options."""
    tool = converter()
    model = tool.Model(folder.name, source.name, "tiny test MeshNet", "MR", "a test fixture")
    tool.convert(model, source.parent, folder.parent)
    card = json.loads((folder / "model.json").read_text())
    card["pipeline"].update({"conform_size": [24, 28, 20], "conform_spacing": 3.0, "tile_depth": 3, **pipeline})
    (folder / "model.json").write_text(json.dumps(card))
    from cadcore.registry.packages import find_model

    return find_model(folder)
