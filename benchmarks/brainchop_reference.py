"""brainchop's conventions re-implemented plainly, beside ``cad segment``: label agreement, time and memory.

The reference shares no code with the engine's meshnet pipeline: it reads the TensorFlow.js ``model.json`` + ``.bin``
from ``../shared/weights`` itself, conforms with numpy/scipy (trilinear ``map_coordinates`` on the FreeSurfer grid:
256³, 1 mm, LIA, centre voxel 128 on the scan's centre, uint8 from min → 0 and the 99.9th percentile → 255), scales
between the 2nd and 98th percentiles, runs the plain full-volume forward (``F.conv3d`` with 'same' padding, layer
by layer, on the whole cube), takes the argmax, masks with MindGrab where the model is masked, and maps the labels
back to every input voxel by nearest neighbour. Then it runs ``cad segment`` in a fresh process on the same volume
and prints per-label Dice, times and peak RSS of both.

    .venv/bin/python benchmarks/brainchop_reference.py VOLUME -m brain-structures [--weights ../shared/weights]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy.ndimage import map_coordinates

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"brain-mask": "mindgrab", "brain-structures": "model30chan18cls", "brain-tissue": "model20chan3cls",
           "brain-parcellation": "model21_104class"}
MASKED_BY = {"brain-parcellation": "brain-mask"}
LIA = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, -1.0, 0]])  # columns: i → L, j → I, k → A (LPS world)


def tfjs_layers(folder: Path) -> list[dict]:
    """[{kind: conv|act, ...}] straight from the tfjs files (kernels as PyTorch wants them)."""
    spec = json.loads((folder / "model.json").read_text())
    blob = b"".join((folder / p).read_bytes() for g in spec["weightsManifest"] for p in g["paths"])
    arrays, offset = {}, 0
    for entry in [w for g in spec["weightsManifest"] for w in g["weights"]]:
        count = int(np.prod(entry["shape"]))
        arrays[entry["name"]] = np.frombuffer(blob, "<f4", count, offset).reshape(entry["shape"])
        offset += 4 * count
    layers = []
    for layer in spec["modelTopology"]["model_config"]["config"]["layers"][1:]:
        config = layer["config"]
        if layer["class_name"] == "Conv3D":
            kernel = torch.from_numpy(np.ascontiguousarray(arrays[config["name"] + "/kernel"].transpose(4, 3, 0, 1, 2)))
            bias = arrays.get(config["name"] + "/bias")
            layers.append({"kind": "conv", "weight": kernel, "dilation": config["dilation_rate"][0],
                           "bias": None if bias is None else torch.from_numpy(bias.copy()),
                           "groupnorm": config["name"].endswith("_gn")})
        else:
            layers.append({"kind": "act", "name": config["activation"]})
    return layers


def plain_forward(layers: list[dict], cube: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(cube)[None, None]
    with torch.inference_mode():
        for layer in layers:
            if layer["kind"] == "conv":
                pad = layer["dilation"] * (layer["weight"].shape[-1] // 2)
                x = F.conv3d(x, layer["weight"], layer["bias"], padding=pad, dilation=layer["dilation"])
                if layer["groupnorm"]:
                    x = F.group_norm(x, x.shape[1])
            else:
                x = {"elu": F.elu, "relu": F.relu, "gelu": F.gelu}[layer["name"]](x)
        return x[0].argmax(0).numpy().astype(np.uint8)


def geometry(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return direction * np.array(image.GetSpacing()), np.array(image.GetOrigin()), np.array(image.GetSize())


def conform(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 cube in (i, j, k) order, cube index → LPS matrix, origin)."""
    values = sitk.GetArrayFromImage(image).astype(np.float64).transpose(2, 1, 0)  # (i, j, k)
    low, high = values.min(), np.percentile(values, 99.9)
    values = np.clip((values - low) * (255.0 / (high - low)), 0, 255)
    matrix, origin, size = geometry(image)
    centre = origin + matrix @ ((size - 1) / 2.0)
    cube_origin = centre - LIA @ np.full(3, 128.0)
    grid = np.stack(np.meshgrid(*[np.arange(256.0)] * 3, indexing="ij"), axis=0).reshape(3, -1)
    points = LIA @ grid + cube_origin[:, None]
    index = np.linalg.solve(matrix, points - origin[:, None])
    # a point counts as inside the scan up to half a voxel beyond the outer voxel centres (then the edge value),
    # outside it is 0: ITK's convention, which the engine's resampler follows
    inside = np.all((index >= -0.5) & (index <= size[:, None] - 0.5), axis=0)
    sampled = map_coordinates(values, index, order=1, mode="nearest", prefilter=False)
    sampled[~inside] = 0.0
    return np.rint(sampled).reshape(256, 256, 256).astype(np.uint8), LIA, cube_origin


def scale(cube: np.ndarray) -> np.ndarray:
    low, high = np.percentile(cube, [2, 98])
    return np.clip((cube.astype(np.float32) - np.float32(low)) / np.float32(high - low), 0, 1).astype(np.float32)


def back_to_input(labels: np.ndarray, image: sitk.Image, cube_origin: np.ndarray) -> np.ndarray:
    """(i, j, k) labels of every input voxel, nearest neighbour from the cube (outside: 0)."""
    matrix, origin, size = geometry(image)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in size], indexing="ij"), axis=0).reshape(3, -1)
    # nearest neighbour, halves rounded up (ITK's rule; the grids often meet exactly half-way, e.g. 1.75 mm voxels)
    cube_index = np.floor(np.linalg.solve(LIA, matrix @ grid + (origin - cube_origin)[:, None]) + 0.5).astype(int)
    inside = np.all((cube_index >= 0) & (cube_index < 256), axis=0)
    out = np.zeros(grid.shape[1], dtype=np.uint8)
    out[inside] = labels[cube_index[0, inside], cube_index[1, inside], cube_index[2, inside]]
    return out.reshape(*size)


def reference(image: sitk.Image, model: str, weights: Path) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    cube, _, cube_origin = conform(image)
    scaled = scale(cube)
    labels = plain_forward(tfjs_layers(weights / "brainchop" / "models" / SOURCES[model]), scaled)
    if model in MASKED_BY:
        brain = plain_forward(tfjs_layers(weights / "brainchop" / "models" / SOURCES[MASKED_BY[model]]), scaled)
        labels[brain == 0] = 0
    return back_to_input(labels, image, cube_origin), time.perf_counter() - started


def cad_segment(volume: Path, model: str) -> tuple[np.ndarray, dict, float, int]:
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "seg.nii.gz"
        env = {**os.environ, "PYTHONPATH": str(REPO / "CADExtension")}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "cadcore", "segment", str(volume), "-m", model, "-o",
                               str(output), "--device", "cpu"], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(f"cad segment failed: {done.stderr.strip()}")
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        sidecar = json.loads(Path(str(output) + ".json").read_text())
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(output))).transpose(2, 1, 0)
        return labels, sidecar.get("timings", {}), wall, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("volume", type=Path)
    parser.add_argument("-m", "--model", required=True, choices=sorted(SOURCES))
    parser.add_argument("--weights", type=Path, default=REPO.parent / "shared" / "weights")
    parser.add_argument("--skip-reference", action="store_true", help="only time cad segment")
    args = parser.parse_args()
    ours, timings, wall, rss = cad_segment(args.volume, args.model)
    print(f"cad segment -m {args.model}: {wall:.1f} s wall, peak RSS {rss / 1024:.0f} MB, timings {timings}")
    if args.skip_reference:
        return
    image = sitk.ReadImage(str(args.volume))
    theirs, seconds = reference(image, args.model, args.weights)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"reference (plain full-volume forward): {seconds:.1f} s, peak RSS {peak / 1024:.0f} MB "
          f"(ratio {seconds / wall:.1f}x)")
    names = {0: "background"}
    card = json.loads((REPO / "CADExtension" / "cadcore" / "models" / args.model / "model.json").read_text())
    names.update({label["value"]: label["name"] for label in card["labels"]})
    worst = 1.0
    print("label | name | voxels ref | voxels cad | Dice")
    for value in sorted(set(np.unique(theirs)) | set(np.unique(ours))):
        if value == 0:
            continue
        a, b = theirs == value, ours == value
        dice = 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())
        worst = min(worst, dice)
        print(f"{value} | {names.get(int(value), '?')} | {a.sum()} | {b.sum()} | {dice:.4f}")
    print(f"identical voxels: {np.mean(theirs == ours):.6f}; lowest Dice {worst:.4f}")


if __name__ == "__main__":
    main()
